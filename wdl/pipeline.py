"""The WMSS pipeline: the phases in order, each skipped when complete and resumed when partial.

The table PHASES below is the whole recipe; each phase names the run-directory artifacts (wdl/run_dir.py) it
reads and writes. A phase is complete when its marker `phases/<name>.json` exists (written after its outputs);
eval keeps one marker per model and the report is rebuilt on every run. Training phases resume from their
checkpoints (the trainer's mechanism; the pipeline hands it the same inputs on every attempt). Under torchrun
every rank runs the training and scoring phases; rank 0 alone writes shared files, with barriers between
phases, and the other ranks leave before the rank-0-only phases (eval, report).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from transformers import AutoModelForCausalLM, AutoTokenizer

from wdl import synthetic
from wdl.config import PipelineConfig, to_dict
from wdl.data import load_records, tokenize_records
from wdl.distributed import (all_gather_objects, barrier, init_distributed, leave_distributed,
                             process_group_backend)
from wdl.eval import BenchmarkSpec, evaluate_model
from wdl.eval.runner import evaluate_in_subprocess
from wdl.footprint import fmt_bytes
from wdl.io import atomic_directory, atomic_write_json, read_jsonl
from wdl.models import generation_config_for, is_complete_hf_checkpoint
from wdl.preflight import Finding, PreflightError, preflight
from wdl.progress import Progress
from wdl.report import collect_report, plot_training, print_summary, write_report
from wdl.run_dir import PipelineError, RunPaths, config_changes, read_marker, write_config, write_marker
from wdl.scoring import score_dataset
from wdl.tiny import build_tokenizer, tiny_qwen3_config
from wdl.train import train_phase
from wdl.train.retention import drop_optimizer_state
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


PHASES = (
    Phase("data", lambda p: p.phase_data(), (), ("train_data", "eval_data", "pretrain_data"),
          enabled=lambda c: c.synthetic.enabled),
    Phase("pretrain", lambda p: p.phase_pretrain(), ("pretrain_data",), ("init", "base"),
          enabled=lambda c: c.model.is_tiny),
    Phase("score_base", lambda p: p.phase_score_base(), ("base", "train_data"), ("base_scores",)),
    Phase("sft", lambda p: p.phase_sft(), ("base", "train_data"), ("sft",)),
    Phase("score_sft", lambda p: p.phase_score_sft(), ("sft", "train_data"), ("sft_scores",)),
    Phase("score_third", lambda p: p.phase_score_third(), ("train_data",), ("third_scores",),
          enabled=lambda c: c.sampling.scheme == "brownboost"),
    Phase("weights", lambda p: p.phase_weights(), ("base_scores", "sft_scores", "third_scores"), ("resampled",)),
    Phase("joint", lambda p: p.phase_joint(), ("sft", "base", "resampled"), ("wmss",)),
    Phase("sft_continued", lambda p: p.phase_sft_continued(), ("sft", "resampled"), ("sft_continued",),
          enabled=lambda c: c.run.sft_continued),
    Phase("eval", lambda p: p.phase_eval(), ("base", "sft", "sft_continued", "wmss", "eval_data"), ("eval",),
          enabled=lambda c: c.run.eval, marker="own", ranks="main"),
    Phase("report", lambda p: p.phase_report(), (), ("report",), marker="none", ranks="main"),
)
PHASE_NAMES = tuple(p.name for p in PHASES)
EVAL_MODELS = ("base", "sft", "sft_continued", "wmss")  # in report order
EVAL_SYSTEM_PROMPT = "eval"  # data.system_prompt value: the eval config's system prompt (eval.system_prompt)


class Pipeline:
    """One run directory and the config it runs with."""

    def __init__(self, cfg: PipelineConfig, out: str | Path, *, console: Console | None = None,
                 preflight: bool = True):
        self.cfg = cfg
        self.check_first = preflight  # run the preflight (wdl/preflight.py) before any work
        self.paths = RunPaths(Path(out).resolve())
        self.dist = init_distributed()
        self.console = console or Console(soft_wrap=True, quiet=not self.dist.is_main)
        self.report: dict | None = None
        self._datasets: dict[str, Any] = {}

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
        self.prepare_run_dir()
        for phase in phases:
            if phase.ranks == "main" and self.dist.distributed:
                leave_distributed()  # the other ranks are done once training is
                if not self.dist.is_main:
                    return None
            if phase.marker == "phase" and self.is_done(phase.name):
                self.console.print(f"[dim]phase {phase.name}: complete, skipped[/dim]")
                continue
            self.check_inputs(phase)
            self.console.rule(f"phase {phase.name}")
            t0 = time.perf_counter()
            extra = phase.run(self) or {}
            barrier()
            if phase.marker == "phase" and self.dist.is_main:
                write_marker(self.paths, phase.name, time.perf_counter() - t0, **extra)
            barrier()
        return self.report

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
        findings = self.check(phases) if self.dist.is_main else None
        findings = all_gather_objects(findings)[0]
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

    def prepare_run_dir(self) -> None:
        """Write config.yaml on a new run; on a resumed one, refuse a config that would change its artifacts."""
        changes = config_changes(self.paths, self.cfg)
        if changes == []:
            return
        barrier()
        if self.dist.is_main:
            write_config(self.paths, self.cfg)
        barrier()

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
        )
        extra = {}
        if train_cfg.drop_optimizer_state:  # before the marker: an interrupted rewrite is finished on the rerun
            if self.dist.is_main:
                freed = drop_optimizer_state(self.paths.work(name), export_dir)
                extra["optimizer_state_dropped_bytes"] = freed
                if freed:
                    self.console.print(f"{name}: export verified; optimizer state dropped from its checkpoints "
                                       f"({fmt_bytes(freed)} freed)")
            barrier()
        # train_seconds sums the training time of every attempt (a resumed phase's wall time does not)
        return {**extra, "steps": summary.steps, "train_seconds": round(summary.wall_s, 3),
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

    def phase_eval(self) -> None:
        ev = self.eval_config()
        fingerprint = {k: v for k, v in to_dict(ev).items() if k != "progress"}  # what changes results
        for name, path in self.eval_models().items():
            done = read_marker(self.paths, f"eval.{name}")
            if done and done.get("eval_config") == fingerprint and done.get("model") == path:
                self.console.print(f"[dim]eval {name}: complete, skipped[/dim]")
                continue
            self.console.print(f"evaluating {name} ({path})")
            t0 = time.perf_counter()
            out_dir = self.paths.eval / name
            if self.dist.world_size > 1:  # a clean process: vLLM must not inherit torchrun's environment or memory
                results = evaluate_in_subprocess(ev.python or sys.executable, path, ev, out_dir, None)
            else:
                results = evaluate_model(path, ev, out_dir)
            results = {b: {**r, "accuracy": float(r["accuracy"]), "n": int(r["n"])} for b, r in results.items()}
            atomic_write_json(out_dir / "results.json", results)
            write_marker(self.paths, f"eval.{name}", time.perf_counter() - t0, model=path, eval_config=fingerprint,
                         results=results)

    # ------------------------------------------------------------------------------------------- report
    def phase_report(self) -> None:
        phase_order = [*PHASE_NAMES, *(f"eval.{m}" for m in EVAL_MODELS)]
        report = collect_report(self.paths, self.cfg, phase_order, EVAL_MODELS)
        logs = {ph: read_jsonl(self.paths.log(ph)) for ph in ("sft", "joint", "sft_continued")}
        report["plots"] = plot_training({ph: rows for ph, rows in logs.items() if rows}, self.paths.plots)
        write_report(self.paths.root, report)
        print_summary(report, self.console)
        self.console.print(f"report: {self.paths.root / 'report.md'}  ({self.paths.report})")
        self.report = report


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
