"""The WMSS pipeline: the phases in order, each skipped when complete and resumed when partial.

The table PHASES below is the whole recipe; each phase names the run-directory artifacts (wdl/run_dir.py) it
reads and writes and the config sections it reads. A phase is skipped when its marker `phases/<name>.json`
(written after its outputs) carries the fingerprint this run computes for it - the config values it reads and
the content digests of its inputs - and its outputs still match the marker's record of them. A marker for
other settings or inputs stops the run with the fix, except when the input changed because its producer was
redone in this command: then the phase is redone too. Outputs without a marker are not trusted: they are
removed before the phase runs. Eval keeps one marker per model and the report is rebuilt on every run.
Training phases resume from their checkpoints (the trainer's mechanism; the pipeline hands it the same inputs
and fingerprint on every attempt).

A command holds the run directory's lock (wdl/lock.py) from start to end, removes the temporaries that
interrupted writes left, and checks the config and the training data against what the run started with. Under
torchrun every rank runs the training and scoring phases; rank 0 alone writes shared files and decides what is
skipped (its verdict is broadcast), with barriers between phases, and the other ranks leave before the
rank-0-only phases (eval, report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sys
import time
from collections.abc import Callable
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from wdl import synthetic
from wdl.branching import check_source, reuse_phase
from wdl.config import PipelineConfig, flatten, to_dict
from wdl.data import load_records, tokenize_records
from wdl.data.records import check_sources
from wdl.distributed import barrier, broadcast_object, init_distributed, leave_distributed, process_group_backend
from wdl.eval import BenchmarkSpec, evaluate_model
from wdl.eval.data import benchmark_file
from wdl.eval.runner import evaluate_in_subprocess
from wdl.footprint import fmt_bytes
from wdl.io import (
    STEP_LOG_FIX,
    atomic_directory,
    atomic_write_json,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    writing,
)
from wdl.lock import RunDirectoryInUse, RunLock, describe_holder
from wdl.manifest import sha256_file
from wdl.models import check_model_source, generation_config_for, is_complete_hf_checkpoint
from wdl.preflight import Finding, PreflightError, preflight
from wdl.progress import Progress
from wdl.report import collect_report, plot_training, print_summary, write_report
from wdl.run_dir import (
    RESUMABLE_CHANGES, Fingerprint, PipelineError, RunPaths, check_data_sources, check_marker, config_changes,
    phase_fingerprint, source_fingerprints, write_config, write_marker,
)
from wdl.scoring import score_dataset
from wdl.tiny import build_tokenizer, tiny_qwen3_config
from wdl.train import train_phase
from wdl.train.retention import drop_optimizer_state, needs_stripping
from wdl.weights_phase import compute_weights

__all__ = ["EVAL_MODELS", "PHASES", "Phase", "Pipeline", "PipelineError"]


@dataclasses.dataclass(frozen=True)
class Phase:
    name: str
    run: Callable[[Pipeline], dict | None]  # returns what its marker records
    inputs: tuple[str, ...]  # RunPaths artifacts it reads (checked when a phase of this run produces them)
    outputs: tuple[str, ...]  # RunPaths artifacts it writes
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    marker: Literal["phase", "own", "none"] = "phase"  # own: eval's per-model markers; none: always rerun
    ranks: Literal["all", "main"] = "all"  # main: rank 0 alone, after the other ranks have left
    config: tuple[str, ...] = ()  # the config sections / key paths it reads (its fingerprint covers them)
    ignores: tuple[str, ...] = ()  # key paths under `config` that cannot change its outputs (left out of it)


PHASES = (
    Phase("data", lambda p: p.phase_data(), (), ("train_data", "eval_data", "pretrain_data"),
          enabled=lambda c: c.synthetic.enabled, config=("synthetic",)),
    Phase("pretrain", lambda p: p.phase_pretrain(), ("pretrain_data",), ("init", "base"),
          enabled=lambda c: c.model.is_tiny, config=("synthetic", "model", "data", "pretrain")),
    Phase("score_base", lambda p: p.phase_score_base(), ("base", "train_data"), ("base_scores",),
          config=("model", "data", "scoring")),
    Phase("sft", lambda p: p.phase_sft(), ("base", "train_data"), ("sft",), config=("model", "data", "sft")),
    Phase("score_sft", lambda p: p.phase_score_sft(), ("sft", "train_data"), ("sft_scores",),
          config=("model", "data", "scoring")),
    Phase("score_third", lambda p: p.phase_score_third(), ("train_data",), ("third_scores",),
          enabled=lambda c: c.sampling.scheme == "brownboost",
          config=("model", "data", "scoring", "sampling.brownboost.third_model")),
    Phase("weights", lambda p: p.phase_weights(), ("base_scores", "sft_scores", "third_scores"), ("resampled",),
          config=("sampling",)),
    Phase("joint", lambda p: p.phase_joint(), ("sft", "base", "resampled", "train_data"), ("wmss",),
          config=("model", "data", "joint")),
    Phase("sft_continued", lambda p: p.phase_sft_continued(), ("sft", "resampled", "train_data"),
          ("sft_continued",), enabled=lambda c: c.run.sft_continued, config=("model", "data", "joint"),
          ignores=("joint.lam", "joint.freeze_weak")),  # joint's settings without a weak model: a lam sweep reuses it
    Phase("eval", lambda p: p.phase_eval(), ("base", "sft", "sft_continued", "wmss", "eval_data"), ("eval",),
          enabled=lambda c: c.run.eval, marker="own", ranks="main", config=("eval",)),
    Phase("report", lambda p: p.phase_report(), (), ("report",), marker="none", ranks="main"),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
EVAL_MODELS = ("base", "sft", "sft_continued", "wmss")  # in report order
EVAL_SYSTEM_PROMPT = "eval"  # data.system_prompt value: the eval config's system prompt (eval.system_prompt)


class Pipeline:
    """One run directory and the config it runs with."""

    def __init__(self, cfg: PipelineConfig, out: str | Path, *, console: Console | None = None,
                 allow_data_change: bool = False, preflight: bool = True, source: str | Path | None = None,
                 copy_from_source: bool = False):
        self.cfg = cfg
        self.check_first = preflight  # run the preflight (wdl/preflight.py) before any work
        self.paths = RunPaths(Path(out).resolve())
        self.dist = init_distributed()
        self.console = console or Console(soft_wrap=True, quiet=not self.dist.is_main)
        # a branching run (--from DIR): the finished phases of DIR this run would redo identically are taken
        self.source = check_source(source, self.paths.root) if source is not None else None
        self.copy_from_source = copy_from_source
        self.allow_data_change = allow_data_change  # resume although a data source changed (the user said so)
        self.report: dict | None = None
        self._datasets: dict[str, Any] = {}
        # artifact name -> content digest, filled as phases are skipped (from their markers) or run; a run that
        # takes phases' outputs from elsewhere adds theirs, so that later phases' fingerprints see them
        self.output_digests: dict[str, str] = {}
        self._redone: set[str] = set()  # artifacts produced by phases that ran in this command
        self._data_digest: str | None = None  # the training data's digest (own data files, from prepare_run_dir)
        self._fingerprint: Fingerprint | None = None  # of the phase running now
        self._config_pending = False  # config.yaml to write once a phase runs or all were checked

    # ------------------------------------------------------------------------------------ the run
    def active_phases(self, target: str | None = None) -> list[Phase]:
        """The phases this config runs, up to and including `target` (all of them by default)."""
        phases = [p for p in PHASES if p.enabled(self.cfg)]
        if target is None:
            return phases
        names = [p.name for p in phases]
        if target not in PHASE_NAMES:
            raise PipelineError(f"unknown phase {target!r}; phases: {', '.join(PHASE_NAMES)}")
        if target not in names:
            raise PipelineError(f"phase {target!r} is not part of this run's config (see `wdl run --help`)")
        return phases[: names.index(target) + 1]

    def is_done(self, phase: str) -> bool:
        return self.paths.marker(phase).is_file()

    def run(self, target: str | None = None) -> dict | None:
        """Run every active phase up to `target` (after the preflight, unless the pipeline was made with
        `preflight=False`); returns the report (None on ranks other than 0)."""
        phases = self.active_phases(target)
        if self.check_first:
            self.preflight(phases)
        else:
            self.check_model_sources()
        with self.session():
            for phase in phases:
                if phase.ranks == "main" and self.dist.distributed:
                    leave_distributed()  # the other ranks are done once training is
                    if not self.dist.is_main:
                        return None
                if phase.marker == "phase":
                    kind, *detail = broadcast_object(self.decide(phase) if self.dist.is_main else None)
                    if kind == "error":
                        raise PipelineError(detail[0])
                    self._fingerprint = detail[0]
                    if kind in ("skip", "reused"):
                        self.output_digests.update(detail[1])
                        if kind == "reused":
                            self.console.print(f"phase {phase.name}: reused from {self.source.root} "
                                               f"({'hard links' if detail[2] == 'link' else 'copies'})")
                        else:
                            self.console.print(f"[dim]phase {phase.name}: complete, skipped[/dim]")
                        self.retain(phase.name)
                        continue
                    if self.dist.is_main:
                        self.write_pending_config()
                        if kind == "redo":
                            self.console.print(f"phase {phase.name}: redone, its input changed ({detail[1]})")
                        self.clear_outputs(phase, work=kind == "redo")
                    barrier()
                self.check_inputs(phase)
                self.console.rule(f"phase {phase.name}")
                t0 = time.perf_counter()
                with writing(f"{self.paths.root} (phase {phase.name})", probe_space=False):
                    extra = phase.run(self) or {}
                barrier()
                if phase.marker == "phase":
                    digests = None
                    if self.dist.is_main:
                        digests = write_marker(self.paths, phase.name, time.perf_counter() - t0,
                                               fingerprint=self._fingerprint, outputs=self.output_paths(phase),
                                               **extra)
                    self.output_digests.update(broadcast_object(digests))
                    self._redone.update(phase.outputs)
                    self.retain(phase.name)
                barrier()
            self.write_pending_config()
        return self.report

    def write_pending_config(self) -> None:
        if self._config_pending and self.dist.is_main:
            write_config(self.paths, self.cfg)
            self._config_pending = False

    # ------------------------------------------------------------------------- fingerprints and skipping
    def phase_config(self, keys: tuple[str, ...], ignores: tuple[str, ...] = ()) -> dict[str, Any]:
        """The config values under `keys` (sections or key paths), flattened, without the keys that cannot
        change an artifact (RESUMABLE_CHANGES) and those under `ignores`."""
        flat = flatten(to_dict(self.cfg))

        def under(k: str, paths: tuple[str, ...]) -> bool:
            return any(k == key or k.startswith(key + ".") for key in paths)

        return {k: v for k, v in flat.items() if under(k, keys) and not under(k, ignores)
                and not any(fnmatchcase(k, pat) for pat in RESUMABLE_CHANGES)}

    def input_digest(self, name: str) -> str | None:
        """The content digest of input `name`: an artifact an active phase produces (from its marker), the
        training data (own files: their recorded fingerprint), or None (the config names it, e.g. a hub base)."""
        if name in self.output_digests:
            return self.output_digests[name]
        if name == "train_data" and not self.cfg.synthetic.enabled:
            return self._data_digest
        producers = {out for p in self.active_phases() for out in p.outputs}
        assert name not in producers, f"input {name} is used before its producer ran"
        return None

    def fingerprint(self, phase: Phase) -> Fingerprint:
        """What phase `phase` of this run is a function of (wdl.run_dir.phase_fingerprint)."""
        inputs = {n: d for n in phase.inputs if (d := self.input_digest(n)) is not None}
        return phase_fingerprint(self.phase_config(phase.config, phase.ignores), inputs)

    def output_paths(self, phase: Phase) -> dict[str, Path]:
        return {name: getattr(self.paths, name) for name in phase.outputs}

    def decide(self, phase: Phase) -> tuple:
        """Rank 0's verdict on a phase with a marker: ("skip", fingerprint, output digests), ("run",
        fingerprint), ("redo", fingerprint, why) or ("error", message)."""
        fp = self.fingerprint(phase)
        check = check_marker(self.paths, phase.name, fp, self.output_paths(phase))
        if check.ok:
            return "skip", fp, check.output_digests
        if check.status == "missing" and self.source is not None:
            reused = self.reuse(phase.name, fp, self.output_paths(phase),
                                extra=(self.paths.log(phase.name), self.paths.sampling / "weights.jsonl"))
            if reused is not None:
                return "reused", fp, *reused
        if check.status == "missing":
            return "run", fp
        changed = [d for d in check.differences if d.startswith("input ")]
        if check.status == "stale" and changed == list(check.differences) and \
                all(d[len("input "):] in self._redone for d in changed):
            return "redo", fp, ", ".join(d[len("input "):] for d in changed)
        return "error", check.message()

    def reuse(self, name: str, fp: Fingerprint, outputs: dict[str, Path], extra: tuple[Path, ...] = (),
              **marker_updates) -> tuple[dict[str, str], str] | None:
        """Phase (or eval marker) `name` taken from the --from run when it passes there (wdl/branching.py):
        (output digests, "link" | "copy"), or None."""
        rel = {k: str(v.relative_to(self.paths.root)) for k, v in outputs.items()}
        extras = tuple(str(p.relative_to(self.paths.root)) for p in extra)
        return reuse_phase(self.source, self.paths, name, fp, rel, extra_files=extras, copy=self.copy_from_source,
                           marker_updates=marker_updates)

    def clear_outputs(self, phase: Phase, *, work: bool = False) -> None:
        """Remove what a phase wrote without completing (nothing vouches for it), and with `work` its training
        checkpoints (made from other inputs)."""
        doomed = list(self.output_paths(phase).values()) + ([self.paths.work(phase.name)] if work else [])
        for path in doomed:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def training_phase(self, name: str) -> tuple[Any, Path] | None:
        """(TrainConfig, export directory) of a training phase, None for the other phases."""
        table = {"pretrain": (self.cfg.pretrain, self.paths.base), "sft": (self.cfg.sft, self.paths.sft),
                 "joint": (self.cfg.joint, self.paths.wmss),
                 "sft_continued": (self.cfg.joint, self.paths.sft_continued)}
        return table.get(name)

    def retain(self, name: str) -> None:
        """A complete training phase keeps model-only checkpoints (train.drop_optimizer_state), once its export
        verifies; after its marker, so that an interrupted rewrite never costs the phase its resume state."""
        spec = self.training_phase(name)
        if spec is None or not spec[0].drop_optimizer_state:
            return
        if self.dist.is_main and needs_stripping(self.paths.work(name)):
            freed = drop_optimizer_state(self.paths.work(name), spec[1])
            self.console.print(f"{name}: export verified; optimizer state dropped from its checkpoints "
                               f"({fmt_bytes(freed)} freed)")
        barrier()

    def pending(self, phases: list[Phase]) -> list[str]:
        """The names of `phases` that still have work to do (eval and report always may)."""
        return [p.name for p in phases if not (p.marker == "phase" and self.is_done(p.name))]

    def check(self, phases: list[Phase] | None = None) -> list[Finding]:
        """The preflight's findings for the pending phases (wdl/preflight.py); no side effects."""
        pending = self.pending(phases if phases is not None else self.active_phases())
        ev, skipped = (self.eval_config(with_skipped=True) if "eval" in pending else (None, []))
        return preflight(self.cfg, self.paths, pending, ev, skipped, world_size=self.dist.world_size)

    def preflight(self, phases: list[Phase]) -> None:
        """Rank 0 checks, every rank learns the outcome; raises PreflightError listing the problems."""
        findings = broadcast_object(self.check(phases) if self.dist.is_main else None)
        for f in findings:
            self.console.print(f"preflight {f}", style="dim" if f.ok else "bold red", markup=False, highlight=False)
        problems = [f for f in findings if not f.ok]
        if problems:
            raise PreflightError(problems)

    def check_inputs(self, phase: Phase) -> None:
        """Every input that a phase of this run produces exists (a marker may outlive a deleted artifact)."""
        producers = {out: p.name for p in self.active_phases() for out in p.outputs}
        for name in phase.inputs:
            path = getattr(self.paths, name)
            if name in producers and not path.exists():
                raise PipelineError(f"{path} is missing: it is produced by phase {producers[name]!r} (run `wdl run`)")

    # ---------------------------------------------------------------------------------- the run directory
    def check_model_sources(self) -> None:
        """Every model the config names can be loaded (local files complete, or a cached / reachable hub name),
        and every local data file exists; rank 0 looks, every rank gets the verdict."""
        problem = None
        if self.dist.is_main:
            named = {} if self.cfg.model.is_tiny else {"model.base": self.cfg.model.base}
            if self.cfg.model.tokenizer:
                named["model.tokenizer"] = self.cfg.model.tokenizer
            if self.cfg.sampling.scheme == "brownboost" and self.cfg.sampling.brownboost.third_model:
                named["sampling.brownboost.third_model"] = self.cfg.sampling.brownboost.third_model
            try:
                for what, name in named.items():
                    check_model_source(name, what)
                if not self.cfg.synthetic.enabled:
                    check_sources(self.cfg.data.sources)  # a mistyped data path: refused before any work
            except ValueError as e:
                problem = str(e)
        problem = broadcast_object(problem)
        if problem is not None:
            raise PipelineError(problem)

    def _open_run_dir(self) -> RunLock:
        root = self.paths.root
        if root.exists() and not root.is_dir():
            raise PipelineError(f"the run directory {root} is a file, not a directory: choose another --out")
        try:
            return RunLock(root).acquire()
        except (FileExistsError, NotADirectoryError):
            raise PipelineError(f"cannot create the run directory {root}: a part of that path is a file; choose "
                                "another --out") from None
        except PermissionError as e:
            raise PipelineError(f"the run directory {root} is not writable ({e.strerror}: {e.filename or root}): "
                                "choose another --out or change its permissions") from None
        except OSError as e:
            raise PipelineError(f"cannot use the run directory {root}: {e.strerror or e} "
                                f"({e.filename or root})") from None

    @contextlib.contextmanager
    def session(self):
        """The run directory for one command: usable, locked (another command there is refused), cleared of
        interrupted writes' temporaries, config and training data checked against the run's."""
        lock, outcome = None, None
        if self.dist.is_main:
            try:
                lock = self._open_run_dir()
                outcome = ("ok", lock.took_over)
            except (PipelineError, RunDirectoryInUse) as e:
                outcome = ("error", str(e))
        kind, detail = broadcast_object(outcome)
        if kind == "error":
            raise PipelineError(detail)
        try:
            if self.dist.is_main:
                if detail is not None:
                    self.console.print(f"took over the run directory's lock from {describe_holder(detail)}, "
                                       "which ended without releasing it")
                removed = remove_stale_temporaries(self.paths.root, recursive=True, skip=("cache",))
                if removed:
                    self.console.print(f"[dim]removed {len(removed)} leftovers of interrupted writes "
                                       f"(e.g. {removed[0]})[/dim]")
            self.prepare_run_dir()
            yield
        finally:
            if lock is not None:
                lock.release()

    def nothing_done(self) -> bool:
        """No phase completed and no training checkpoint was written here: nothing depends on the recorded config
        and data yet."""
        return not any(self.paths.markers.glob("*.json")) and not any(self.paths.root.glob("work/*/step-*"))

    def prepare_run_dir(self) -> None:
        """Write config.yaml on a new run; on a resumed one, refuse a config that would change its artifacts.
        Record the training data's fingerprints (own data files), or refuse a change of their content."""
        outcome = None
        if self.dist.is_main:
            try:
                if self.nothing_done():  # a start that failed before any result: the config may change
                    for record in (self.paths.config, self.paths.data_sources):
                        record.unlink(missing_ok=True)
                changes = config_changes(self.paths, self.cfg)
                if changes is None and any(self.paths.markers.glob("*.json")):
                    self._config_pending = True  # config.yaml was lost: written once the markers have been checked
                elif changes != []:
                    write_config(self.paths, self.cfg)
                digest = None
                if not self.cfg.synthetic.enabled:
                    current = source_fingerprints(self.cfg.data.sources, self.cfg.data.split)
                    digest = check_data_sources(self.paths, current, allow_change=self.allow_data_change,
                                                note=self.console.print)
                outcome = ("ok", digest)
            except PipelineError as e:
                outcome = ("error", str(e))
        kind, detail = broadcast_object(outcome)
        if kind == "error":
            raise PipelineError(detail)
        self._data_digest = detail

    # ----------------------------------------------------------------------------------- models and data
    @property
    def base_model(self) -> str:
        return str(self.paths.base) if self.cfg.model.is_tiny else self.cfg.model.base

    @property
    def tokenizer_source(self) -> str:
        if self.cfg.model.tokenizer:
            return self.cfg.model.tokenizer
        return str(self.paths.init) if self.cfg.model.is_tiny else self.cfg.model.base

    def data_config(self, kind: Literal["train", "pretrain"]):
        """The DataConfig of the training data, or of the tiny base's plain-text pretraining data."""
        data = self.cfg.data
        changes: dict[str, Any] = {}
        if not data.cache_dir:
            changes["cache_dir"] = str(self.paths.cache)
        if data.system_prompt == EVAL_SYSTEM_PROMPT:  # train with the prompt the models are evaluated with
            changes["system_prompt"] = self.cfg.eval.system_prompt_text
        if kind == "pretrain":
            changes.update(sources=[str(self.paths.pretrain_data)], loss_on="all")
        elif self.cfg.synthetic.enabled:
            changes["sources"] = [str(self.paths.train_data)]
        return dataclasses.replace(data, **changes)

    def dataset(self, kind: Literal["train", "pretrain"]):
        """The tokenized dataset (cached by `datasets`; identical on every call and every resume)."""
        if kind not in self._datasets:
            cfg = self.data_config(kind)
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
            records = load_records(cfg)
            with Progress(f"tokenizing {kind} data", total=records.num_rows, unit="records", bar=False,
                          enabled=self.dist.is_main) as progress:  # on a terminal datasets draws the bar
                ds, tok_report = tokenize_records(records, tokenizer, cfg, progress)
            self.console.print(f"{kind} data: {tok_report}")
            self._datasets[kind] = ds
        return self._datasets[kind]

    def resampled_dataset(self):
        ds = self.dataset("train")
        ids = read_json(self.paths.resampled)["ids"]
        position = {int(i): p for p, i in enumerate(ds["idx"])}
        return ds.select([position[int(i)] for i in ids])

    def _train(self, name: str, strong: str, kind: Literal["train", "pretrain"], train_cfg, export_dir: Path,
               *, resampled: bool = False, weak: str | None = None) -> dict:
        """Run (or resume) one training phase; returns what its marker records."""
        summary = train_phase(
            name,
            strong_model=strong,
            dataset=self.resampled_dataset() if resampled else self.dataset(kind),
            data=self.data_config(kind),
            train=train_cfg,
            work_dir=self.paths.work(name),
            export_dir=export_dir,
            log_path=self.paths.log(name),
            weak_model=weak,
            tokenizer_path=self.tokenizer_source,
            fingerprint=self._fingerprint.digest if self._fingerprint is not None else None,
        )
        # train_seconds sums the training time of every attempt (a resumed phase's wall time does not)
        return {"steps": summary.steps, "train_seconds": round(summary.wall_s, 3),
                "resumed_from": summary.resumed_from, "final_loss": summary.final_loss,
                "world_size": self.dist.world_size, "backend": train_cfg.backend,
                "process_group": process_group_backend()}

    def score_model(self, model: str, name: str) -> dict[int, dict]:
        out_path = self.paths.score_file(name)
        if not out_path.is_file():
            self.console.print(f"scoring {name} ({model}) on {len(self.dataset('train'))} samples")
        scores = score_dataset(model, self.dataset("train"), out_path=out_path,
                               tokens_per_micro_batch=self.cfg.scoring.tokens_per_micro_batch,
                               dtype=self.cfg.scoring.dtype)
        h = np.array([v["entropy"] for v in scores.values()])
        self.console.print(f"scored {name} ({model}): {len(scores)} samples, mean entropy {h.mean():.4f} -> {out_path}")
        return scores

    # ------------------------------------------------------------------------------------------ phases
    def phase_data(self) -> None:
        if not self.dist.is_main:
            return
        s, d = self.cfg.synthetic, self.paths
        splits = synthetic.make_splits(s.n_train, s.n_eval, s.n_pretrain, s.seed)
        synthetic.write_chat_jsonl(d.train_data, splits.train)
        synthetic.write_eval_json(d.eval_data, splits.eval)
        synthetic.write_text_jsonl(d.pretrain_data, splits.pretrain)
        self.console.print(f"synthetic problems: {len(splits.train)} train, {len(splits.eval)} eval (held out), "
                           f"{len(splits.pretrain)} pretrain -> {d.data}")

    def phase_pretrain(self) -> dict:
        if self.dist.is_main and not is_complete_hf_checkpoint(self.paths.init):
            self._build_tiny_init(self.paths.init)
        barrier()
        return self._train("pretrain", str(self.paths.init), "pretrain", self.cfg.pretrain, self.paths.base)

    def _build_tiny_init(self, init: Path) -> None:
        s, t = self.cfg.synthetic, self.cfg.model.tiny
        splits = synthetic.make_splits(s.n_train, s.n_eval, s.n_pretrain, s.seed)
        tokenizer = build_tokenizer(synthetic.corpus(splits.train + splits.pretrain), vocab_size=t.vocab_size)
        shape = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("vocab_size", "seed")}
        config = tiny_qwen3_config(len(tokenizer), **shape)
        torch.manual_seed(t.seed)
        model = AutoModelForCausalLM.from_config(config)
        gen = generation_config_for(tokenizer)  # stops at <|im_end|> (chat turns) and <|endoftext|> (text)
        with atomic_directory(init, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            gen.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        n = sum(p.numel() for p in model.parameters())
        self.console.print(f"tiny Qwen3: {n / 1e6:.2f} M parameters, vocabulary {len(tokenizer)} -> {init}")

    def phase_score_base(self) -> None:
        self.score_model(self.base_model, "base")

    def phase_sft(self) -> dict:
        return self._train("sft", self.base_model, "train", self.cfg.sft, self.paths.sft)

    def phase_score_sft(self) -> None:
        self.score_model(str(self.paths.sft), "sft")

    def phase_score_third(self) -> None:
        self.score_model(self.cfg.sampling.brownboost.third_model, "third")

    def phase_weights(self) -> None:
        if self.dist.is_main:
            sampling = self.cfg.sampling
            self.console.print(compute_weights(sampling, self.paths.scores, self.paths.sampling,
                                               brownboost=sampling.scheme == "brownboost"))

    def phase_joint(self) -> dict:
        return self._train("joint", str(self.paths.sft), "train", self.cfg.joint, self.paths.wmss, resampled=True,
                           weak=self.base_model)

    def phase_sft_continued(self) -> dict:
        # The fair baseline: the same start (M1), data, schedule and number of steps as joint, without mixing.
        return self._train("sft_continued", str(self.paths.sft), "train", self.cfg.joint, self.paths.sft_continued,
                           resampled=True)

    # --------------------------------------------------------------------------------------------- eval
    def eval_config(self, *, with_skipped: bool = False):
        """The eval config the run uses: the synthetic set added, optional sets without a local copy left out
        (with `with_skipped`: also the list of those)."""
        ev = self.cfg.eval  # its progress: a bar on a terminal, lines in a log file (wdl/progress.py)
        if self.cfg.synthetic.enabled and self.cfg.synthetic.n_eval > 0:
            spec = BenchmarkSpec(name="synthetic", path=str(self.paths.eval_data), format="gsm8k")
            ev = dataclasses.replace(ev, benchmarks=[spec, *[b for b in ev.benchmarks if b.name != "synthetic"]])
        present, skipped = ev.present_benchmarks()
        if skipped:
            ev = dataclasses.replace(ev, benchmarks=present)
        return (ev, skipped) if with_skipped else ev

    def eval_models(self) -> dict[str, str]:
        models = {"base": self.base_model} if self.cfg.run.eval_base else {}
        models["sft"] = str(self.paths.sft)
        if self.cfg.run.sft_continued:
            models["sft_continued"] = str(self.paths.sft_continued)
        models["wmss"] = str(self.paths.wmss)
        return models

    def eval_fingerprint(self, name: str, path: str, settings: dict, sets: dict[str, str] | None = None
                         ) -> Fingerprint:
        """Eval of model `name`: the eval settings that change results, the model's content (a run artifact) or
        name, the synthetic eval set's content and `sets` (benchmark_digests: each local set's content)."""
        inputs = {"model": self.output_digests.get(name, path), **(sets or {})}
        if "eval_data" in self.output_digests:
            inputs["eval_data"] = self.output_digests["eval_data"]
        return phase_fingerprint(flatten(settings, "eval"), inputs)

    def benchmark_digests(self, ev) -> dict[str, str]:
        """"set NAME" -> the SHA-256 of each local benchmark file (an edited set is evaluated again for every
        model, so the report never compares models on different versions of a set)."""
        out = {}
        for spec in ev.benchmarks:
            file = benchmark_file(spec, ev)
            if file is not None and file.is_file() and file.resolve() != self.paths.eval_data.resolve():
                out[f"set {spec.name}"] = f"sha256:{sha256_file(file)}"
        return out

    def phase_eval(self) -> None:
        ev = self.eval_config()
        settings = {k: v for k, v in to_dict(ev).items() if k != "progress"}  # what changes results
        # the synthetic set is this run's artifact: its content (eval_data's digest) counts, not where it lives,
        # so that a branch of this run (--from) can take the results of models it shares
        settings["benchmarks"] = [{**b, "path": "eval_data"} if b["path"] == str(self.paths.eval_data) else b
                                  for b in settings["benchmarks"]]
        sets = self.benchmark_digests(ev)
        for name, path in self.eval_models().items():
            fp = self.eval_fingerprint(name, path, settings, sets)
            out_dir = self.paths.eval / name
            if check_marker(self.paths, f"eval.{name}", fp, {"eval": out_dir}).ok:
                self.console.print(f"[dim]eval {name}: complete, skipped[/dim]")
                continue  # anything else (new settings, another model, a damaged result) is evaluated again
            if self.source is not None and self.reuse(f"eval.{name}", fp, {"eval": out_dir}, model=path):
                self.console.print(f"eval {name}: reused from {self.source.root}")
                continue
            self.console.print(f"evaluating {name} ({path})")
            t0 = time.perf_counter()
            if out_dir.exists():
                shutil.rmtree(out_dir)
            if self.dist.world_size > 1:  # a clean process: vLLM must not inherit torchrun's environment or memory
                results = evaluate_in_subprocess(ev.python or sys.executable, path, ev, out_dir, None)
            else:
                results = evaluate_model(path, ev, out_dir)
            results = {b: {**r, "accuracy": float(r["accuracy"]), "n": int(r["n"])} for b, r in results.items()}
            atomic_write_json(out_dir / "results.json", results)
            write_marker(self.paths, f"eval.{name}", time.perf_counter() - t0, fingerprint=fp,
                         outputs={"eval": out_dir}, model=path, eval_config=settings, results=results)

    # ------------------------------------------------------------------------------------------- report
    def phase_report(self) -> None:
        phase_order = [*PHASE_NAMES, *(f"eval.{m}" for m in EVAL_MODELS)]
        report = collect_report(self.paths, self.cfg, phase_order, EVAL_MODELS)
        logs = {ph: read_jsonl(self.paths.log(ph), fix=STEP_LOG_FIX) for ph in ("sft", "joint", "sft_continued")}
        report["plots"] = plot_training({ph: rows for ph, rows in logs.items() if rows}, self.paths.plots)
        write_report(self.paths.root, report)
        print_summary(report, self.console)
        if report.get("reused"):
            self.console.print(f"reused (wdl run --from): {', '.join(report['reused'])}")
        self.console.print(f"report: {self.paths.root / 'report.md'}  ({self.paths.report})")
        self.report = report



