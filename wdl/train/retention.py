"""What a finished training phase keeps on disk: once its export verifies, its checkpoints keep the model weights
only (`train.drop_optimizer_state`, on by default). AdamW's two moments are 2/3 of a checkpoint (fp32 weights 4
bytes per trainable parameter, moments 8); a finished phase never resumes, so they are dead weight.

    drop_optimizer_state(work_dir, export_dir) -> bytes freed

The export must verify first (`check_hf_checkpoint`: config, weights, no truncated file; `check_export`: every
file against its recorded SHA-256), and so must each checkpoint (its manifest). Every kept checkpoint
(`train.keep_last` of them) is then rebuilt beside itself as `.step-N.model-only.tmp`: `state/` a
torch.distributed.checkpoint of its `model.*` tensors (fp32, every backend: DeepSpeed's ZeRO partitions are
consolidated), the per-rank files as they were, trainer_state.json with `"optimizer_state": false`, a new
manifest and COMPLETE.json; two renames swap it in (`.step-N.PID.old` in between, which the run directory's
clean-up restores or removes after an interruption). `wdl extract` still reads the strong and the weak
sub-model from it; a resume from it is refused with the way out. It needs host memory for one checkpoint's
model weights.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from wdl.io import atomic_write_json, read_json, remove_stale_temporaries
from wdl.manifest import hash_files, list_files, sha256_file
from wdl.models import check_export, check_hf_checkpoint

from .checkpoint import MANIFEST, MARKER, CheckpointError, complete_checkpoints, verify_checkpoint
from .torch_backend import single_process_dcp

STATE = "state"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _is_dcp(state_dir: Path) -> bool:
    return (state_dir / ".metadata").is_file()


def _dcp_keys(state_dir: Path) -> dict[str, TensorStorageMetadata]:
    meta = dcp.FileSystemReader(str(state_dir)).read_metadata().state_dict_metadata
    return {k: m for k, m in meta.items() if isinstance(m, TensorStorageMetadata)}


def has_optimizer_state(state_dir: Path) -> bool:
    """A checkpoint's state/ holds more than model weights (DeepSpeed's own format always does)."""
    return not _is_dcp(state_dir) or any(
        not k.startswith("model.") for k in dcp.FileSystemReader(str(state_dir)).read_metadata().state_dict_metadata
    )


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
    wanted = {
        k[len("model.") :]: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in _dcp_keys(state_dir).items()
        if k.startswith("model.")
    }
    with single_process_dcp():
        dcp.load({"model": wanted}, storage_reader=dcp.FileSystemReader(str(state_dir)), no_dist=True)
    return wanted


def strip_checkpoint(ckpt: Path) -> int:
    """Rewrite one complete checkpoint as model weights only; returns the bytes freed (0 when already done)."""
    ckpt = Path(ckpt)
    work, name = ckpt.parent, ckpt.name
    remove_stale_temporaries(work, prefix=name)  # an interrupted rewrite: undone (or its swap completed)
    trainer_state = read_json(ckpt / "trainer_state.json", fix=f"the checkpoint {ckpt} is damaged")
    if trainer_state.get("optimizer_state") is False:
        return 0
    problems = verify_checkpoint(ckpt)
    if problems:
        raise CheckpointError(f"{ckpt} fails verification ({problems[0]}): its optimizer state is not dropped")
    tmp = work / f".{name}.model-only.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        tensors = _model_tensors(ckpt / STATE, trainer_state.get("backend", "single"))
        if not tensors:
            raise CheckpointError(f"{ckpt / STATE}: no model weights found; the checkpoint is left as it is")
        with single_process_dcp():
            dcp.save({"model": tensors}, checkpoint_id=str(tmp / STATE), no_dist=True)
        del tensors
        for f in ckpt.iterdir():  # the per-rank files, unchanged
            if f.name not in (STATE, "trainer_state.json", MANIFEST, MARKER):
                (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
        atomic_write_json(
            tmp / "trainer_state.json", {**trainer_state, "optimizer_state": False, "state_format": "dcp"}
        )
        files = hash_files(tmp, list_files(tmp))
        atomic_write_json(tmp / MANIFEST, {"files": dict(sorted(files.items()))})
        marker = read_json(ckpt / MARKER, fix=f"the checkpoint {ckpt} is damaged")
        atomic_write_json(tmp / MARKER, {**marker, "manifest_sha256": sha256_file(tmp / MANIFEST)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    before = _dir_bytes(ckpt)
    old = work / f".{name}.{os.getpid()}.old"
    os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)
    return max(before - _dir_bytes(ckpt), 0)


def finished_checkpoint(work_dir: str | Path, fingerprint: str | None) -> Path | None:
    """The newest checkpoint of `work_dir` when it is a model-only one of a phase trained to its last step with
    this `fingerprint` (its export can be rebuilt from it: `wdl extract`), else None."""
    ckpts = complete_checkpoints(Path(work_dir))
    if not ckpts:
        return None
    path = ckpts[-1][1]
    try:
        state = read_json(path / "trainer_state.json")
    except (OSError, ValueError):
        return None
    done = state.get("optimizer_state") is False and state.get("step") == state.get("total_steps")
    same = fingerprint is None or state.get("fingerprint") == fingerprint
    return path if done and same and not verify_checkpoint(path) else None


def needs_stripping(work_dir: str | Path) -> bool:
    """Some complete checkpoint in `work_dir` still holds its optimizer state."""
    for _, path in complete_checkpoints(Path(work_dir)):
        try:
            if read_json(path / "trainer_state.json").get("optimizer_state") is not False:
                return True
        except (OSError, ValueError, AttributeError):
            return True  # a damaged one: drop_optimizer_state names it
    return False


def drop_optimizer_state(work_dir: str | Path, export_dir: str | Path) -> int:
    """Verify the phase's export, then strip every complete checkpoint in `work_dir`; returns the bytes freed.
    Raises ValueError (and touches nothing) when the export does not verify."""
    check_hf_checkpoint(export_dir)
    problems = check_export(export_dir)
    if problems:
        raise ValueError(
            f"{export_dir}: the export does not verify ({problems[0]}); the training checkpoints are "
            "kept whole: delete the export and rerun to export it again from the last checkpoint"
        )
    return sum(strip_checkpoint(path) for _, path in complete_checkpoints(Path(work_dir)))
