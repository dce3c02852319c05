"""What a finished training phase keeps on disk: once its export verifies, its checkpoints keep the model weights
only (`train.drop_optimizer_state`, on by default). AdamW's two moments are 2/3 of a checkpoint (fp32 weights 4
bytes per trainable parameter, moments 8); a finished phase never resumes, so they are dead weight.

    drop_optimizer_state(work_dir, export_dir) -> bytes freed

Every kept checkpoint (`train.keep_last` of them) is rewritten, one at a time, as a torch.distributed.checkpoint
of its `model.*` tensors (fp32, every backend: DeepSpeed's ZeRO partitions are consolidated), so `wdl extract`
still reads the strong and the weak sub-model from it. The rewrite goes to a temporary directory that replaces
`state/` by renames; trainer_state.json then says `"optimizer_state": false` (a resume from such a checkpoint is
refused with the way out). An interrupted rewrite is finished or undone on the next call. It needs host memory
for one checkpoint's model weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from wdl.io import atomic_write_json
from wdl.models import verify_hf_checkpoint

from .checkpoint import complete_checkpoints
from .torch_backend import single_process_dcp

STATE, NEW, OLD = "state", ".state.model-only.tmp", ".state.old"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _is_dcp(state_dir: Path) -> bool:
    return (state_dir / ".metadata").is_file()


def _dcp_keys(state_dir: Path) -> dict[str, TensorStorageMetadata]:
    meta = dcp.FileSystemReader(str(state_dir)).read_metadata().state_dict_metadata
    return {k: m for k, m in meta.items() if isinstance(m, TensorStorageMetadata)}


def has_optimizer_state(state_dir: Path) -> bool:
    """A checkpoint's state/ holds more than model weights (DeepSpeed's own format always does)."""
    return not _is_dcp(state_dir) or any(not k.startswith("model.") for k in dcp.FileSystemReader(
        str(state_dir)).read_metadata().state_dict_metadata)


def _model_tensors(state_dir: Path, backend: str) -> dict[str, torch.Tensor]:
    """The checkpoint's model weights, `strong.*` / `weak.*` keys, fp32 on the CPU."""
    if not _is_dcp(state_dir):
        if backend != "deepspeed":
            raise ValueError(f"{state_dir}: neither a DCP checkpoint nor one of DeepSpeed's")
        from .deepspeed_backend import TAG, import_deepspeed

        import_deepspeed()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(state_dir), tag=TAG, exclude_frozen_parameters=True)
        return {k: v.float().contiguous() for k, v in sd.items()}
    wanted = {k[len("model."):]: torch.empty(m.size, dtype=m.properties.dtype)
              for k, m in _dcp_keys(state_dir).items() if k.startswith("model.")}
    with single_process_dcp():
        dcp.load({"model": wanted}, storage_reader=dcp.FileSystemReader(str(state_dir)), no_dist=True)
    return wanted


def _finish_interrupted(ckpt: Path) -> None:
    state, new, old = ckpt / STATE, ckpt / NEW, ckpt / OLD
    if not state.exists() and new.exists():  # killed between the two renames: the new state is complete
        os.replace(new, state)
    if not state.exists() and old.exists():
        os.replace(old, state)
    shutil.rmtree(new, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def strip_checkpoint(ckpt: Path) -> int:
    """Rewrite one complete checkpoint as model weights only; returns the bytes freed (0 when already done)."""
    ckpt = Path(ckpt)
    _finish_interrupted(ckpt)
    state_file = ckpt / "trainer_state.json"
    trainer_state = json.loads(state_file.read_text(encoding="utf-8"))
    state = ckpt / STATE
    before = _dir_bytes(state)
    if has_optimizer_state(state):
        tensors = _model_tensors(state, trainer_state.get("backend", "single"))
        if not tensors:
            raise ValueError(f"{state}: no model weights found; the checkpoint is left as it is")
        with single_process_dcp():
            dcp.save({"model": tensors}, checkpoint_id=str(ckpt / NEW), no_dist=True)
        del tensors
        os.replace(state, ckpt / OLD)
        os.replace(ckpt / NEW, state)
        shutil.rmtree(ckpt / OLD)
    if trainer_state.get("optimizer_state") is not False:
        atomic_write_json(state_file, {**trainer_state, "optimizer_state": False, "state_format": "dcp"})
    return max(before - _dir_bytes(state), 0)


def drop_optimizer_state(work_dir: str | Path, export_dir: str | Path) -> int:
    """Verify the phase's export, then strip every complete checkpoint in `work_dir`; returns the bytes freed.
    Raises ValueError (and touches nothing) when the export does not verify."""
    verify_hf_checkpoint(export_dir)
    return sum(strip_checkpoint(path) for _, path in complete_checkpoints(Path(work_dir)))
