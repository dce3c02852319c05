"""Extract one sub-model of a training checkpoint as a plain Hugging Face checkpoint, offline, in one process.

    extract_submodel("runs/x/work/joint", "runs/x/strong_step300", which="strong")

Works on checkpoints of every backend (DCP for single/FSDP2, DeepSpeed ZeRO-2/3) on any number of ranks: the
sharded state is consolidated on the CPU. A frozen weak model is not in the checkpoint (it never changes): it is
re-exported from its source. The checkpoint is verified against its manifest before torch or DeepSpeed reads
it (wdl/train/checkpoint.py); given a work directory, the newest checkpoint that verifies is used.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import AutoModelForCausalLM

from wdl.io import read_json, remove_stale_temporaries
from wdl.models import check_export_target, export_dtype, load_config, save_hf_checkpoint

from .checkpoint import verified_checkpoint
from .deepspeed_backend import TAG, import_deepspeed
from .torch_backend import single_process_dcp


def _dcp_state(state_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The `model.<prefix>*` tensors of a DCP checkpoint, consolidated in this process."""
    reader = dcp.FileSystemReader(str(state_dir))
    wanted = {}
    for key, meta in reader.read_metadata().state_dict_metadata.items():
        if key.startswith("model." + prefix) and isinstance(meta, TensorStorageMetadata):
            wanted[key[len("model."):]] = torch.empty(meta.size, dtype=meta.properties.dtype)
    if wanted:
        with single_process_dcp():
            dcp.load({"model": wanted}, storage_reader=reader, no_dist=True)
    return {k[len(prefix):]: v for k, v in wanted.items()}


def _deepspeed_state(state_dir: Path, prefix: str) -> dict[str, torch.Tensor]:
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sd = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=TAG, exclude_frozen_parameters=True)
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def extract_submodel(source: str | Path, out: str | Path, *, which: str = "strong") -> Path:
    if which not in ("strong", "weak"):
        raise ValueError(f"which must be 'strong' or 'weak', got {which!r}")
    out = Path(out)
    check_export_target(out)  # before any work: an unrelated directory is never replaced
    remove_stale_temporaries(out.parent, prefix=out.name)  # what an interrupted extract into `out` left
    ckpt = verified_checkpoint(Path(source))
    state = read_json(ckpt / "trainer_state.json", fix=f"the checkpoint {ckpt} is damaged")
    model_path = state["strong_model"] if which == "strong" else state.get("weak_model")
    if model_path is None:
        raise ValueError(f"{ckpt}: this run has no weak model (it was an SFT-style phase)")
    config = load_config(model_path)
    if which == "weak" and state.get("freeze_weak"):
        sd = AutoModelForCausalLM.from_pretrained(model_path).state_dict()
    elif state["backend"] == "deepspeed" and state.get("state_format") != "dcp":  # dcp: see retention.py
        sd = _deepspeed_state(ckpt / "state", f"{which}.")
    else:
        sd = _dcp_state(ckpt / "state", f"{which}.")
    if not sd:
        raise ValueError(f"{ckpt}: the checkpoint holds no '{which}' weights")
    dtype = export_dtype(model_path)
    sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    return save_hf_checkpoint(config, sd, out, tokenizer_path=state.get("tokenizer") or model_path,
                              generation_source=model_path)
