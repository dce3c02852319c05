"""Training checkpoints in `work_dir/step-N/`: written under a temporary name, committed by a marker, renamed.

Layout of one checkpoint:
    step-N/state/             the backend's model + optimizer state (torch.distributed.checkpoint, or DeepSpeed's)
    step-N/rank{r}.pt         per-rank state: data-loader position and RNG states (python, numpy, torch, cuda)
    step-N/trainer_state.json step, counters, world size, the phase's inputs
    step-N/COMPLETE.json      written last, after every rank finished; only then is the directory renamed

A directory without the marker (a crash mid-save) is never loaded. Retention deletes old checkpoints only after
the new one is complete and in place, so `keep_last=1` still always leaves one complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from wdl.io import atomic_write_json

from wdl.distributed import DistContext, barrier

MARKER = "COMPLETE.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete_checkpoints(work_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
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


class CheckpointManager:
    def __init__(self, work_dir: Path, *, keep_last: int, dist: DistContext):
        self.work_dir = Path(work_dir)
        self.keep_last = keep_last
        self.dist = dist

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

    def save(self, step: int, backend, trainer_state: dict, rank_state: dict) -> Path:
        final = self.work_dir / f"step-{step}"
        tmp = self.work_dir / f".step-{step}.tmp"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        backend.save(tmp / "state")
        torch.save(rank_state, tmp / f"rank{self.dist.rank}.pt")
        barrier()  # every rank's files are written
        if self.dist.is_main:
            atomic_write_json(tmp / "trainer_state.json", trainer_state)
            atomic_write_json(tmp / MARKER, {"step": step, "world_size": self.dist.world_size})
            if final.exists():  # an incomplete leftover with the same name
                shutil.rmtree(final)
            os.replace(tmp, final)
            self._purge()
        barrier()
        return final

    def _purge(self) -> None:
        ckpts = complete_checkpoints(self.work_dir)
        for _, p in ckpts[: max(len(ckpts) - self.keep_last, 0)]:
            try:
                shutil.rmtree(p)
            except OSError as e:  # a failed delete must not kill training
                print(f"warning: could not delete old checkpoint {p}: {e}")

    def load(self, path: Path, backend) -> tuple[dict, dict]:
        trainer_state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        saved_world = trainer_state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise ValueError(f"{path} was written by {saved_world} processes, this run has {self.dist.world_size}: "
                             "resume with the same number of processes (the data position is per rank)")
        backend.load(path / "state")
        rank_state = torch.load(path / f"rank{self.dist.rank}.pt", weights_only=False)  # our own file
        return trainer_state, rank_state
