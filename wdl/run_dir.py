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
    DIR/data_sources.json           content fingerprints of the training data files (runs on your own data)
    DIR/.wdl.lock, .wdl.lock.json   the lock of the run in progress and its holder (wdl/lock.py)

A marker is a JSON object: the phase, its wall time, when it finished, what the phase adds (training steps,
eval settings and results), and two records that decide whether the phase may be skipped:
    "fingerprint": {"digest", "config", "inputs"}   SHA-256 of the config values the phase reads and the content
                                                   digest of each of its inputs (earlier outputs, the data)
    "outputs": {NAME: {"digest", "files"}}          size and SHA-256 of every file of each output at the time
A phase is skipped only when its marker's fingerprint equals the one this run computes and every output still
matches its record (`check_marker`); `wdl run --from` reuses another run's outputs by the same test.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from wdl.config import PipelineConfig, diff, dump_yaml, to_dict
from wdl.io import atomic_write_json, atomic_write_text, read_json
from wdl.manifest import build_manifest, manifest_digest, sha256_file, verify_manifest

# Keys that may differ between the config a run started with and the one it resumes with: they do not change
# any artifact already written (eval is redone for models whose eval settings changed).
RESUMABLE_CHANGES = (
    "run.*",
    "eval.*",
    "*.log_every",
    "*.checkpoint_every",
    "*.keep_last",
    "*.drop_optimizer_state",
    "*.tensorboard",
    "scoring.tokens_per_micro_batch",
    "data.cache_dir",
    "data.num_proc",
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

    @property
    def data_sources(self) -> Path:
        return self.root / "data_sources.json"

    def score_file(self, model: str) -> Path:
        return self.scores / f"{model}.jsonl"

    def log(self, phase: str) -> Path:
        return self.logs / f"{phase}.jsonl"

    def work(self, phase: str) -> Path:
        return self.root / "work" / phase

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.json"


# ------------------------------------------------------------------------------- fingerprints and markers
def _sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What a phase's outputs are a function of: `config`, the SHA-256 of the config values the phase reads, and
    `inputs`, a content digest per input (an earlier phase's output, the training data)."""

    config: str
    inputs: Mapping[str, str]

    @property
    def digest(self) -> str:
        return _sha256_json({"config": self.config, "inputs": dict(self.inputs)})

    def to_json(self) -> dict:
        return {"digest": self.digest, "config": self.config, "inputs": dict(sorted(self.inputs.items()))}

    @classmethod
    def from_json(cls, data: Any) -> Fingerprint | None:
        if not isinstance(data, dict) or not isinstance(data.get("config"), str) or \
                not isinstance(data.get("inputs"), dict):
            return None
        return cls(config=data["config"], inputs={str(k): str(v) for k, v in data["inputs"].items()})

    def differences(self, other: Fingerprint) -> list[str]:
        """What differs from `other`: "config" and/or "input NAME" entries."""
        out = ["config"] if self.config != other.config else []
        names = sorted(set(self.inputs) | set(other.inputs))
        return out + [f"input {n}" for n in names if self.inputs.get(n) != other.inputs.get(n)]


def phase_fingerprint(config: Mapping[str, Any], inputs: Mapping[str, str]) -> Fingerprint:
    """The fingerprint of a phase that reads the config values `config` (key path -> value, e.g. from
    `configlib.flatten`) and the inputs `inputs` (name -> content digest: an output's digest from its producer's
    marker, `artifact_digest`, or any string that changes when the input does)."""
    return Fingerprint(config=_sha256_json(dict(config)), inputs=dict(sorted(inputs.items())))


def artifact_digest(path: str | Path) -> str:
    """The content digest of a file or directory tree (hashes every file), as markers record it for outputs."""
    return manifest_digest(build_manifest(path))


def _marker_fix(marker: Path) -> str:
    return f"delete {marker} to redo that phase"


def read_marker(paths: RunPaths, name: str) -> dict | None:
    """A marker's content (None when there is none); a damaged one is a PipelineError naming it."""
    path = paths.marker(name)
    if not path.is_file():
        return None
    try:
        data = read_json(path, fix=f"a damaged phase marker; {_marker_fix(path)}")
    except ValueError as e:
        raise PipelineError(str(e)) from None
    if not isinstance(data, dict):
        raise PipelineError(f"{path}: not a phase marker (a JSON object): {_marker_fix(path)}")
    return data


@dataclasses.dataclass(frozen=True)
class MarkerCheck:
    """Whether phase `name` may be skipped (`ok`), and why not: "missing" (never completed here), "unreadable"
    (damaged JSON), "stale" (done for another fingerprint: `differences`), "damaged" (an output changed since:
    `problems` name the files)."""

    name: str
    path: Path
    status: Literal["missing", "complete", "stale", "damaged", "unreadable"]
    marker: dict | None = None
    differences: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == "complete"

    @property
    def output_digests(self) -> dict[str, str]:
        """name -> content digest of each output, as recorded (complete markers)."""
        outputs = (self.marker or {}).get("outputs") or {}
        return {k: v["digest"] for k, v in outputs.items() if isinstance(v, dict) and "digest" in v}

    def message(self) -> str:
        """One explanation with the fix, for a check that is neither ok nor missing."""
        if self.status == "unreadable":
            return self.problems[0]
        if self.status == "stale":
            what = ", ".join(self.differences)
            return (f"{self.path}: phase {self.name} was completed here with a different {what} than this run has "
                    "(config.yaml removed or replaced, markers copied from another run, or changed inputs): resume "
                    "with the original config and data, start a new run with another --out, or "
                    f"{_marker_fix(self.path)} and the phases after it")
        if self.status == "damaged":
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return (f"phase {self.name} is marked complete ({self.path}) but its output changed since: "
                    f"{self.problems[0]}{more}. Restore the output, or {_marker_fix(self.path)}")
        return f"{self.path}: phase {self.name} is {self.status}"


def check_marker(paths: RunPaths, name: str, fingerprint: Fingerprint, outputs: Mapping[str, str | Path]
                 ) -> MarkerCheck:
    """May phase `name` of run directory `paths` be skipped by a run whose fingerprint for it is `fingerprint`?
    Yes when its marker records that fingerprint and each output in `outputs` (name -> path) still matches the
    marker's record of it (every file hashed). Never raises for a bad marker: the status says what is wrong."""
    path = paths.marker(name)
    try:
        marker = read_marker(paths, name)
    except PipelineError as e:
        return MarkerCheck(name, path, "unreadable", problems=(str(e),))
    if marker is None:
        return MarkerCheck(name, path, "missing")
    recorded = Fingerprint.from_json(marker.get("fingerprint"))
    if recorded is None:
        return MarkerCheck(name, path, "stale", marker, differences=("fingerprint (none recorded: an older wdl)",))
    if recorded.digest != fingerprint.digest:
        return MarkerCheck(name, path, "stale", marker, differences=tuple(recorded.differences(fingerprint)))
    problems: list[str] = []
    records = marker.get("outputs") or {}
    for out, out_path in outputs.items():
        record = records.get(out)
        if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
            problems.append(f"{out_path}: the marker records no content for output {out}")
            continue
        problems += verify_manifest(out_path, record["files"])
    if problems:
        return MarkerCheck(name, path, "damaged", marker, problems=tuple(problems))
    return MarkerCheck(name, path, "complete", marker)


def write_marker(paths: RunPaths, name: str, seconds: float, *, fingerprint: Fingerprint | None = None,
                 outputs: Mapping[str, str | Path] | None = None, **extra) -> dict[str, str]:
    """Write phase `name`'s marker (after its outputs are complete): `extra` plus the fingerprint and a record
    of every file of each output (hashed now). Returns the outputs' content digests."""
    records = {}
    for out, out_path in (outputs or {}).items():
        files = build_manifest(out_path)
        records[out] = {"digest": manifest_digest(files), "files": files}
    body = {"phase": name, "seconds": round(seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}
    if fingerprint is not None:
        body["fingerprint"] = fingerprint.to_json()
    if records:
        body["outputs"] = records
    atomic_write_json(paths.marker(name), body)
    return {out: r["digest"] for out, r in records.items()}


# --------------------------------------------------------------------------------------------- data sources
def source_fingerprints(sources: Sequence[str], split: str = "train") -> dict[str, str]:
    """A content fingerprint per data source: the SHA-256 of a local file; a hub dataset by name and split."""
    out = {}
    for s in sources:
        p = Path(s)
        out[s] = f"sha256:{sha256_file(p)}" if p.is_file() else f"hub:{s}:{split}"
    return out


def check_data_sources(paths: RunPaths, current: Mapping[str, str], *, allow_change: bool = False,
                       note=print) -> str:
    """Compare the data sources' content with what this run directory recorded (record it on a new run); return
    the digest phase fingerprints use for the training data. A change is a PipelineError unless `allow_change`:
    then the new content is accepted (and recorded) and the phases already complete keep what they computed
    from the old content, so their fingerprints stay valid."""
    current = dict(current)
    if not paths.data_sources.is_file():
        atomic_write_json(paths.data_sources, {"fingerprint": current, "content": current, "changes": []})
        return _sha256_json(current)
    fix = "restore it, or start a new run with another --out"
    try:
        record = read_json(paths.data_sources, fix=fix)
        fingerprint, content = dict(record["fingerprint"]), dict(record["content"])
    except ValueError as e:  # read_json's message names the file, the line and the fix
        raise PipelineError(str(e)) from None
    except (KeyError, TypeError):
        raise PipelineError(f"{paths.data_sources}: not a data-source record (a JSON object with fingerprint and "
                            f"content): {fix}") from None
    if current != content:
        changed = [s for s in sorted(set(current) | set(content)) if current.get(s) != content.get(s)]
        if not allow_change:
            listed = ", ".join(changed[:5])
            raise PipelineError(
                f"the training data changed since this run started: {listed} (content recorded in "
                f"{paths.data_sources}). Resuming would mix the old and the new content across phases: restore the "
                "data, start a new run with another --out, or pass --allow-data-change to go on with the new "
                "content (phases already complete keep what they computed from the old)")
        note(f"data changed since the run started ({', '.join(changed[:5])}): going on with the new content "
             "(--allow-data-change); phases already complete keep their results")
        changes = list(record.get("changes") or []) + [{"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                                        "content": current}]
        atomic_write_json(paths.data_sources, {"fingerprint": fingerprint, "content": current, "changes": changes})
    return _sha256_json(fingerprint)


def config_changes(paths: RunPaths, cfg: PipelineConfig) -> list[tuple[str, object, object]] | None:
    """The differences between the run directory's config.yaml and `cfg` (None for a new run directory);
    raises PipelineError when one of them would change an artifact already written."""
    if not paths.config.is_file():
        return None
    try:
        old = yaml.safe_load(paths.config.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PipelineError(f"{paths.config}: not a readable config ({str(e).splitlines()[0]}): restore it, or delete "
                            "it (each phase marker's fingerprint then decides whether the phase is kept)") from None
    if not isinstance(old, dict):
        raise PipelineError(f"{paths.config}: not a config mapping: restore it, or delete it (each phase marker's "
                            "fingerprint then decides whether the phase is kept)")
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
