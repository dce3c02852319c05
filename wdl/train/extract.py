"""Extract one sub-model of a training checkpoint as a plain Hugging Face checkpoint, offline, in one process.

    extract_submodel("runs/x/work/joint", "runs/x/strong_step300", which="strong")

Works on checkpoints of every backend (DCP for single/FSDP2, DeepSpeed ZeRO-2/3) on any number of ranks: the
sharded state is consolidated on the CPU. A frozen weak model is not in the checkpoint (it never changes): it is
re-exported from its source.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from transformers import AutoModelForCausalLM

from wdl.models import export_dtype, load_config, save_hf_checkpoint

from .checkpoint import is_complete, latest_checkpoint
from .deepspeed_backend import TAG, import_deepspeed
from .torch_backend import single_process_dcp


def _resolve(source: Path) -> Path:
    source = Path(source)
    if is_complete(source):
        return source
    ckpt = latest_checkpoint(source)
    if ckpt is None:
        raise ValueError(f"{source}: no complete training checkpoint (a step-N directory with COMPLETE.json) here; "
                         "pass a phase's work directory (e.g. DIR/work/joint) or one of its step-N checkpoints")
    return ckpt


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
    ckpt = _resolve(Path(source))
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
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
