"""Training checkpoints in `work_dir/step-N/`: written under a temporary name, hashed, committed by a marker,
renamed; checked against their hashes before anything in them is read.

Layout of one checkpoint:
    step-N/state/               the backend's model + optimizer state (torch.distributed.checkpoint, or DeepSpeed's)
    step-N/rank{r}.safetensors  per-rank state: data-loader position and RNG states (wdl/train/rank_state.py)
    step-N/trainer_state.json   step, counters, world size, the phase's inputs and fingerprint
    step-N/MANIFEST.json        size and SHA-256 of every file above, written after all of them
    step-N/COMPLETE.json        written last: step, world size and the SHA-256 of MANIFEST.json

A directory without the marker (a crash mid-save) is never loaded. Before a checkpoint is loaded, every file is
checked against the manifest (the ranks share the hashing) and no file may have been added: DCP's `.metadata`
and DeepSpeed's files are pickles that torch's and DeepSpeed's readers unpickle, so a flipped bit, a truncated
file or a planted file never reaches them. The per-rank state is a safetensors file and cannot run code
whatever it holds. The manifest detects damage and files changed after the save; it is not a signature: a
writer who also rewrites MANIFEST.json and COMPLETE.json can change a checkpoint, so a work directory deserves
the trust of code one runs.

Resuming takes the newest checkpoint that verifies: one that fails is reported (file and reason), moved aside to
`step-N.failed` (so that retention never counts it) and the next older one is tried; when none verifies the
phase stops with a CheckpointError saying what to do. Retention deletes old checkpoints only after the new one
is complete and in place, so `keep_last=1` still always leaves one complete checkpoint.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from wdl.distributed import DistContext, all_gather_objects, barrier, broadcast_object
from wdl.io import atomic_write_json, read_json, writing
from wdl.manifest import hash_files, list_files, sha256_file, verify_manifest

from .rank_state import read_rank_state, rng_state, set_rng_state, write_rank_state

__all__ = ["CheckpointError", "CheckpointManager", "complete_checkpoints", "is_complete", "latest_checkpoint",
           "rng_state", "set_rng_state", "verify_checkpoint", "verified_checkpoint"]

MARKER = "COMPLETE.json"
MANIFEST = "MANIFEST.json"
FAILED_SUFFIX = ".failed"
_STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what to do."""


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_complete(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


def rank_state_file(path: Path, rank: int) -> Path:
    return Path(path) / f"rank{rank}.safetensors"


def complete_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint (committed by its marker, not yet verified), oldest first."""
    out = []
    if Path(work_dir).is_dir():
        for p in Path(work_dir).iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and is_complete(p):
                out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(work_dir: Path) -> Path | None:
    ckpts = complete_checkpoints(work_dir)
    return ckpts[-1][1] if ckpts else None


def verify_checkpoint(path: Path, *, rank: int = 0, world_size: int = 1) -> list[str]:
    """What is wrong with checkpoint `path`, one line per file ([] when it is intact). With several ranks each
    checks its share of the files (gather the lists); rank 0 also checks for files added after the save."""
    path = Path(path)
    fix = "the checkpoint is damaged"
    try:
        marker = read_json(path / MARKER, fix=fix)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            return [f"{manifest_path}: missing (a checkpoint of an older wdl without hashes, or damaged): it cannot "
                    "be verified, so it is not loaded"]
        if not isinstance(marker, dict) or marker.get("manifest_sha256") != sha256_file(manifest_path):
            return [f"{manifest_path}: does not match the SHA-256 recorded in {path / MARKER}: damaged or replaced"]
        files = read_json(manifest_path, fix=fix)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [str(e) if isinstance(e, ValueError) else f"{path}: {e}"]
    names = sorted(files)[rank::world_size]
    return verify_manifest(path, files, names=names, check_extra=rank == 0, ignore=(MANIFEST, MARKER))


def verified_checkpoint(source: Path, *, note: Callable[[str], None] = _note) -> Path:
    """The checkpoint `source` names (a step-N directory, or the newest verifying one of a work directory), checked
    in this process; a CheckpointError when none verifies. Reads nothing but hashes."""
    source = Path(source)
    if is_complete(source):
        problems = verify_checkpoint(source)
        if problems:
            raise CheckpointError(f"{source} fails verification: {problems[0]}; use another checkpoint")
        return source
    ckpts = complete_checkpoints(source)
    if not ckpts:
        raise CheckpointError(f"{source}: no complete training checkpoint (a step-N directory with {MARKER}) here; "
                              "pass a phase's work directory (e.g. DIR/work/joint) or one of its step-N checkpoints")
    failed = []
    for _, path in reversed(ckpts):
        problems = verify_checkpoint(path)
        if not problems:
            if failed:
                note(f"using {path.name}, the newest checkpoint of {source} that verifies")
            return path
        note(f"checkpoint {path} fails verification: {problems[0]}")
        failed.append(path.name)
    raise CheckpointError(f"no checkpoint in {source} verifies ({', '.join(failed)}): see the messages above")


class CheckpointManager:
    def __init__(self, work_dir: Path, *, keep_last: int, dist: DistContext, note: Callable[[str], None] = _note):
        self.work_dir = Path(work_dir)
        self.keep_last = keep_last
        self.dist = dist
        self.note = note if dist.is_main else (lambda message: None)

    def clean_stale(self) -> None:
        """Remove leftovers of interrupted saves (temporary directories, step dirs without a marker)."""
        if self.dist.is_main and self.work_dir.is_dir():
            for p in self.work_dir.iterdir():
                stale_tmp = p.name.startswith(".step-") and p.name.endswith(".tmp")
                if p.is_dir() and (stale_tmp or (_STEP_DIR.match(p.name) and not is_complete(p))):
                    shutil.rmtree(p, ignore_errors=True)
        barrier()

    def latest(self) -> Path | None:
        return latest_checkpoint(self.work_dir)

    # ------------------------------------------------------------------ save
    def save(self, step: int, backend, trainer_state: dict, rank_state: dict) -> Path:
        final = self.work_dir / f"step-{step}"
        tmp = self.work_dir / f".step-{step}.tmp"
        rank, world = self.dist.rank, self.dist.world_size
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        try:
            with writing(final):
                backend.save(tmp / "state")
                write_rank_state(rank_state_file(tmp, rank), rank_state)
                barrier()  # every rank's files are written
                if self.dist.is_main:
                    atomic_write_json(tmp / "trainer_state.json", trainer_state)
                barrier()
                names = broadcast_object(list_files(tmp) if self.dist.is_main else None)
                files: dict[str, dict] = {}
                for part in all_gather_objects(hash_files(tmp, names[rank::world])):
                    files.update(part)
                if self.dist.is_main:
                    atomic_write_json(tmp / MANIFEST, {"files": dict(sorted(files.items()))})
                    atomic_write_json(tmp / MARKER, {"step": step, "world_size": world,
                                                     "manifest_sha256": sha256_file(tmp / MANIFEST)})
                    if final.exists():  # an incomplete or failed leftover with the same name
                        shutil.rmtree(final)
                    os.replace(tmp, final)
        except BaseException:
            if self.dist.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if self.dist.is_main:
            self._purge()
        barrier()
        return final

    def _purge(self) -> None:
        ckpts = complete_checkpoints(self.work_dir)
        for _, p in ckpts[: max(len(ckpts) - self.keep_last, 0)]:
            try:
                shutil.rmtree(p)
            except OSError as e:  # a failed delete must not kill training
                print(f"warning: could not delete old checkpoint {p}: {e}", file=sys.stderr)

    # ------------------------------------------------------------------ load
    def problems(self, path: Path) -> list[str]:
        """verify_checkpoint over all ranks (collective): the same list on every rank."""
        mine = verify_checkpoint(path, rank=self.dist.rank, world_size=self.dist.world_size)
        return [p for part in all_gather_objects(mine) for p in part]

    def load(self, path: Path, backend, check: Callable[[Path, dict], None] | None = None) -> tuple[dict, dict]:
        """(trainer_state, this rank's state) of checkpoint `path`, verified first; the backend's state is loaded
        into `backend`. `check(path, trainer_state)` may refuse the checkpoint (raise) before anything else of it
        is read."""
        problems = self.problems(path)
        if problems:
            raise CheckpointError(f"{path} fails verification: {problems[0]}")
        return self._read(path, backend, check)

    def _read(self, path: Path, backend, check) -> tuple[dict, dict]:
        trainer_state = read_json(path / "trainer_state.json", fix=f"the checkpoint {path} is damaged")
        saved_world = trainer_state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise CheckpointError(f"{path} was written by {saved_world} processes, this run has "
                                  f"{self.dist.world_size}: resume with the same number of processes (the data "
                                  "position is per rank)")
        if check is not None:
            check(path, trainer_state)
        backend.load(path / "state")
        return trainer_state, read_rank_state(rank_state_file(path, self.dist.rank))

    def load_latest(self, backend, check: Callable[[Path, dict], None] | None = None
                    ) -> tuple[Path, dict, dict] | None:
        """Load the newest checkpoint that verifies (collective): (path, trainer_state, rank_state), or None when
        there is no complete checkpoint. Checkpoints that fail are reported and moved aside; when every one
        fails, CheckpointError. `check` as in `load`."""
        failed: list[str] = []
        ckpts = complete_checkpoints(self.work_dir)
        for i, (_, path) in enumerate(reversed(ckpts)):
            problems = self.problems(path)
            if not problems:
                if failed:
                    self.note(f"resuming from {path.name}, the newest checkpoint that verifies")
                return (path, *self._read(path, backend, check))
            more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
            failed.append(f"{path.name}: {problems[0]}{more}")
            self.note(f"checkpoint {path} fails verification: {problems[0]}{more}")
            if i + 1 < len(ckpts):  # an older one remains: keep this one out of the way of retention
                aside = path.with_name(path.name + FAILED_SUFFIX)
                if self.dist.is_main:
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(path, aside)
                    self.note(f"moved it to {aside} (delete it once inspected)")
                barrier()
        if failed:
            raise CheckpointError(f"no checkpoint in {self.work_dir} verifies ({'; '.join(failed)}). The phase "
                                  f"cannot resume: delete {self.work_dir} to train it again from its first step")
        return None
