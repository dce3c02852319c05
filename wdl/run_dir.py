"""The run directory: where every artifact lives (RunPaths), the phase markers, and the config it started with.

    DIR/config.yaml                 the resolved config of the run
    DIR/phases/<name>.json          a phase's marker, written after its outputs (eval: one per model)
    DIR/data/                       synthetic splits: train.jsonl, eval.json, pretrain.jsonl
    DIR/init/, DIR/base/            tiny base only: the random initialisation and the pretrained base M0
    DIR/sft/, DIR/wmss/, DIR/sft_continued/   HF checkpoints of M1, the extracted strong model, the baseline
    DIR/scores/<model>.jsonl        per-sample entropy / NLL / margin
    DIR/sampling/                   weights.jsonl, resampled.json
    DIR/logs/<phase>.jsonl          one row per optimizer step of each training phase
    DIR/work/<phase>/               training checkpoints (resume state)
    DIR/eval/<model>/, DIR/plots/, DIR/report.json, DIR/report.md
    DIR/cache/                      the datasets cache of parsed and tokenized records

A marker is a small JSON object: the phase, its wall time, when it finished, and what the phase adds (training
steps, eval settings and results). Readers take the keys they know, so a marker can carry more (fingerprints of
the inputs) without breaking old runs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import time
from pathlib import Path

import yaml

from wdl.config import PipelineConfig, diff, dump_yaml, to_dict
from wdl.io import atomic_write_json, atomic_write_text

# Keys that may differ between the config a run started with and the one it resumes with: they do not change
# any artifact already written (eval is redone for models whose eval settings changed).
RESUMABLE_CHANGES = (
    "run.*",
    "eval.*",
    "*.log_every",
    "*.checkpoint_every",
    "*.keep_last",
    "*.drop_optimizer_state",
    "scoring.tokens_per_micro_batch",
)


class PipelineError(ValueError):
    """A run that cannot go on as asked (a missing input, a config that does not match the run directory)."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Every artifact of one run directory, by name (the names the phase table's inputs and outputs use)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def markers(self) -> Path:
        return self.root / "phases"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_data(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def eval_data(self) -> Path:
        return self.data / "eval.json"

    @property
    def pretrain_data(self) -> Path:
        return self.data / "pretrain.jsonl"

    @property
    def init(self) -> Path:
        return self.root / "init"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def sft(self) -> Path:
        return self.root / "sft"

    @property
    def wmss(self) -> Path:
        return self.root / "wmss"

    @property
    def sft_continued(self) -> Path:
        return self.root / "sft_continued"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def base_scores(self) -> Path:
        return self.score_file("base")

    @property
    def sft_scores(self) -> Path:
        return self.score_file("sft")

    @property
    def third_scores(self) -> Path:
        return self.score_file("third")

    @property
    def sampling(self) -> Path:
        return self.root / "sampling"

    @property
    def resampled(self) -> Path:
        return self.sampling / "resampled.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def score_file(self, model: str) -> Path:
        return self.scores / f"{model}.jsonl"

    def log(self, phase: str) -> Path:
        return self.logs / f"{phase}.jsonl"

    def work(self, phase: str) -> Path:
        return self.root / "work" / phase

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.json"


def write_marker(paths: RunPaths, name: str, seconds: float, **extra) -> None:
    atomic_write_json(paths.marker(name), {"phase": name, "seconds": round(seconds, 3),
                                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})


def read_marker(paths: RunPaths, name: str) -> dict | None:
    path = paths.marker(name)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def config_changes(paths: RunPaths, cfg: PipelineConfig) -> list[tuple[str, object, object]] | None:
    """The differences between the run directory's config.yaml and `cfg` (None for a new run directory);
    raises PipelineError when one of them would change an artifact already written."""
    if not paths.config.is_file():
        return None
    old = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
    new = to_dict(cfg)
    new["run"]["out"] = str(paths.root)
    changes = diff(old, new)
    blocking = [c for c in changes if not any(fnmatch.fnmatchcase(c[0], pat) for pat in RESUMABLE_CHANGES)]
    if blocking:
        lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in blocking[:20])
        raise PipelineError(
            f"{paths.root} was started with a different config ({paths.config}):\n{lines}\n"
            "Resume with the original settings, or start a new run with another --out. Keys that may "
            f"change when resuming: {', '.join(RESUMABLE_CHANGES)}."
        )
    return changes


def write_config(paths: RunPaths, cfg: PipelineConfig) -> None:
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(paths.root)))
    atomic_write_text(paths.config, dump_yaml(cfg))
