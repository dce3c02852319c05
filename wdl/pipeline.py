"""The WMSS pipeline: every phase in order, skipping complete ones and resuming a partial one.

Phases (artifacts under the run directory DIR; each written atomically):
  data           synthetic splits -> data/{train.jsonl, eval.json, pretrain.jsonl}  (synthetic.enabled)
  pretrain       tiny base only: tokenizer + random tiny Qwen3 -> init/, short plain-text pretraining -> base/
  score_base     per-sample entropy / NLL / margin of the base M0 on the training set -> scores/base.jsonl
  sft            M1 = SFT of M0 (completion-only loss) -> sft/          log: logs/sft.jsonl
  score_sft      the same scores for M1 -> scores/sft.jsonl
  score_third    BrownBoost only: a third, later model -> scores/third.jsonl
  weights        scores merged by idx + sampling weights -> sampling/weights.jsonl; seeded resampling
                 (optionally deduplicated) -> sampling/resampled.json
  joint          weak = M0, strong = M1, logit mixing on the resampled set; the strong sub-model -> wmss/
                 log: logs/joint.jsonl
  sft_continued  optional baseline: M1 trained on the same resampled set, same steps, no mixing
  eval           base, sft, (sft_continued), wmss -> eval/<model>/
  report         report.json, report.md, plots/*.png, and the summary table

A phase is complete when its marker `phases/<name>.json` exists (written after its outputs, with its wall
time). Training phases resume from their checkpoints (the trainer's mechanism; the pipeline hands it the
same inputs on every attempt). Under torchrun every rank runs the training and scoring phases; rank 0
alone writes shared files and runs eval, with barriers between phases.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from wdl.config import PipelineConfig, diff, dump_yaml, to_dict
from wdl.io import atomic_directory, atomic_write_json, atomic_write_text

PHASES = (
    "data",
    "pretrain",
    "score_base",
    "sft",
    "score_sft",
    "score_third",
    "weights",
    "joint",
    "sft_continued",
    "eval",
    "report",
)
TRAINING_PHASES = ("pretrain", "sft", "joint", "sft_continued")
EVAL_ORDER = ("base", "sft", "sft_continued", "wmss")

# Keys that may differ between the config a run started with and the one it resumes with: they do not change
# any artifact already written (eval is redone for models whose eval settings changed).
RESUMABLE_CHANGES = (
    "run.*",
    "eval.*",
    "*.log_every",
    "*.checkpoint_every",
    "*.keep_last",
    "scoring.tokens_per_micro_batch",
)


# ------------------------------------------------------------------------------------------ distributed
@dataclasses.dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_env() -> Ranks:
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_distributed(ranks: Ranks) -> None:
    """Join the process group torchrun / the DeepSpeed launcher set up (no-op for a single process)."""
    if ranks.world > 1:
        from wdl.distributed import init_distributed as join

        join()


def barrier() -> None:
    from wdl.distributed import barrier as train_barrier

    train_barrier()


def leave_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------- helpers
class PipelineError(ValueError):
    """A run that cannot go on as asked (a missing input, a config that does not match the run directory)."""


class Pipeline:
    """One run directory and the config it runs with."""

    def __init__(self, cfg: PipelineConfig, out: str | Path, *, console=None, ranks: Ranks | None = None):
        from rich.console import Console

        self.cfg = cfg
        self.out = Path(out).resolve()
        self.ranks = ranks or ranks_from_env()
        self.console = console or Console(soft_wrap=True, quiet=not self.ranks.is_main)
        d = self.out
        self.paths = {
            "config": d / "config.yaml",
            "markers": d / "phases",
            "data": d / "data",
            "init": d / "init",
            "base": d / "base" if cfg.model.is_tiny else None,
            "sft": d / "sft",
            "wmss": d / "wmss",
            "sft_continued": d / "sft_continued",
            "scores": d / "scores",
            "sampling": d / "sampling",
            "logs": d / "logs",
            "work": d / "work",
            "eval": d / "eval",
            "plots": d / "plots",
            "cache": d / "cache",
        }
        self._datasets: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------ phase plumbing
    def active_phases(self) -> list[str]:
        c = self.cfg
        skip = set()
        if not c.synthetic.enabled:
            skip.add("data")
        if not c.model.is_tiny:
            skip.add("pretrain")
        if c.sampling.scheme != "brownboost":
            skip.add("score_third")
        if not c.run.sft_continued:
            skip.add("sft_continued")
        if not c.run.eval:
            skip.add("eval")
        return [p for p in PHASES if p not in skip]

    def marker(self, phase: str) -> Path:
        return self.paths["markers"] / f"{phase}.json"

    def is_done(self, phase: str) -> bool:
        return self.marker(phase).is_file()

    def _mark_done(self, phase: str, seconds: float, **extra) -> None:
        if self.ranks.is_main:
            atomic_write_json(
                self.marker(phase),
                {"phase": phase, "seconds": round(seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 **extra},
            )

    def run(self, target: str | None = None) -> dict | None:
        """Run every active phase up to and including `target` (all of them by default)."""
        phases = self.active_phases()
        if target is not None:
            if target not in PHASES:
                raise PipelineError(f"unknown phase {target!r}; phases: {', '.join(PHASES)}")
            if target not in phases:
                raise PipelineError(f"phase {target!r} is not part of this run's config (see `wdl run --help`)")
            phases = phases[: phases.index(target) + 1]
        init_distributed(self.ranks)
        if "eval" in phases:
            self.check_eval_sets()
        self.prepare_run_dir()
        report = None
        for phase in phases:
            if phase == "eval" and self.ranks.world > 1:
                # evaluation is rank 0's alone: the other ranks are done once training is
                leave_distributed()
                if not self.ranks.is_main:
                    return None
            if phase == "report":
                report = self.write_report(print_summary=True) if self.ranks.is_main else None
                continue
            if self.is_done(phase) and phase != "eval":
                self.console.print(f"[dim]phase {phase}: complete, skipped[/dim]")
                continue
            self.console.rule(f"phase {phase}")
            t0 = time.perf_counter()
            extra = getattr(self, f"phase_{phase}")() or {}
            barrier()
            if phase != "eval":  # eval keeps one marker per model
                self._mark_done(phase, time.perf_counter() - t0, **extra)
            barrier()
        return report

    def prepare_run_dir(self) -> None:
        """Write config.yaml on a new run; on a resumed one, refuse a config that would change its artifacts."""
        path = self.paths["config"]
        new = to_dict(self.cfg)
        new["run"]["out"] = str(self.out)
        if path.is_file():
            import yaml

            old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            changes = diff(old, new)
            blocking = [c for c in changes if not any(fnmatch.fnmatchcase(c[0], pat) for pat in RESUMABLE_CHANGES)]
            if blocking:
                lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in blocking[:20])
                raise PipelineError(
                    f"{self.out} was started with a different config ({path}):\n{lines}\n"
                    "Resume with the original settings, or start a new run with another --out. Keys that may "
                    f"change when resuming: {', '.join(RESUMABLE_CHANGES)}."
                )
            if not changes:
                return
        barrier()
        if self.ranks.is_main:
            cfg = dataclasses.replace(self.cfg, run=dataclasses.replace(self.cfg.run, out=str(self.out)))
            atomic_write_text(path, dump_yaml(cfg))
        barrier()

    # ----------------------------------------------------------------------------------- models and data
    @property
    def base_model(self) -> str:
        return str(self.paths["base"]) if self.cfg.model.is_tiny else self.cfg.model.base

    @property
    def tokenizer_source(self) -> str:
        if self.cfg.model.tokenizer:
            return self.cfg.model.tokenizer
        return str(self.paths["init"]) if self.cfg.model.is_tiny else self.cfg.model.base

    def data_config(self, kind: str = "train"):
        """The DataConfig of the training data (or of the tiny base's plain-text pretraining data)."""
        data = self.cfg.data
        changes: dict[str, Any] = {}
        if getattr(data, "cache_dir", None) in (None, ""):
            changes["cache_dir"] = str(self.paths["cache"])
        if kind == "pretrain":
            changes.update(sources=[str(self.paths["data"] / "pretrain.jsonl")], loss_on="all")
        elif self.cfg.synthetic.enabled:
            changes["sources"] = [str(self.paths["data"] / "train.jsonl")]
        return dataclasses.replace(data, **changes)

    def dataset(self, kind: str = "train"):
        """The tokenized dataset (cached by `datasets`; identical on every call and every resume)."""
        if kind not in self._datasets:
            from transformers import AutoTokenizer

            from wdl.data import load_records, tokenize_records

            cfg = self.data_config(kind)
            tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_source)
            records = load_records(cfg)
            ds, tok_report = tokenize_records(records, tokenizer, cfg)
            self.console.print(f"{kind} data: {tok_report}")
            self._datasets[kind] = ds
        return self._datasets[kind]

    def resampled_dataset(self):
        ds = self.dataset("train")
        sel = json.loads((self.paths["sampling"] / "resampled.json").read_text(encoding="utf-8"))
        position = {int(i): p for p, i in enumerate(ds["idx"])}
        return ds.select([position[int(i)] for i in sel["ids"]])

    def _train(self, name: str, strong: str, dataset, train_cfg, export_dir: Path, weak: str | None = None) -> dict:
        """Run (or resume) one training phase; returns what its marker records."""
        from wdl.train import train_phase

        summary = train_phase(
            name,
            strong_model=strong,
            dataset=dataset,
            data=self.data_config("pretrain" if name == "pretrain" else "train"),
            train=train_cfg,
            work_dir=self.paths["work"] / name,
            export_dir=export_dir,
            log_path=self.paths["logs"] / f"{name}.jsonl",
            weak_model=weak,
            tokenizer_path=self.tokenizer_source,
        )
        # train_seconds sums the training time of every attempt (a resumed phase's wall time does not)
        return {"steps": summary.steps, "train_seconds": round(summary.wall_s, 3),
                "resumed_from": summary.resumed_from, "final_loss": summary.final_loss}

    def _require(self, path: Path, producer: str) -> None:
        if not path.exists():
            raise PipelineError(f"{path} is missing: it is produced by phase {producer!r} (run `wdl run`)")

    # ------------------------------------------------------------------------------------------ phases
    def phase_data(self) -> None:
        from wdl import synthetic

        if not self.ranks.is_main:
            return
        s = self.cfg.synthetic
        splits = synthetic.make_splits(s.n_train, s.n_eval, s.n_pretrain, s.seed)
        d = self.paths["data"]
        synthetic.write_chat_jsonl(d / "train.jsonl", splits.train)
        synthetic.write_eval_json(d / "eval.json", splits.eval)
        synthetic.write_text_jsonl(d / "pretrain.jsonl", splits.pretrain)
        self.console.print(
            f"synthetic problems: {len(splits.train)} train, {len(splits.eval)} eval (held out), "
            f"{len(splits.pretrain)} pretrain -> {d}"
        )

    def phase_pretrain(self) -> dict:
        from wdl.models import is_complete_hf_checkpoint

        init = self.paths["init"]
        if self.ranks.is_main and not is_complete_hf_checkpoint(init):
            self._build_tiny_init(init)
        barrier()
        return self._train("pretrain", str(init), self.dataset("pretrain"), self.cfg.pretrain, self.paths["base"])

    def _build_tiny_init(self, init: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        from wdl import synthetic
        from wdl.models import generation_config_for
        from wdl.tiny import build_tokenizer, tiny_qwen3_config

        s, t = self.cfg.synthetic, self.cfg.model.tiny
        splits = synthetic.make_splits(s.n_train, s.n_eval, s.n_pretrain, s.seed)
        tokenizer = build_tokenizer(synthetic.corpus(splits.train + splits.pretrain), vocab_size=t.vocab_size)
        config = tiny_qwen3_config(
            len(tokenizer),
            hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size,
            num_hidden_layers=t.num_hidden_layers,
            num_attention_heads=t.num_attention_heads,
            num_key_value_heads=t.num_key_value_heads,
            head_dim=t.head_dim,
            max_position_embeddings=t.max_position_embeddings,
        )
        torch.manual_seed(t.seed)
        model = AutoModelForCausalLM.from_config(config)
        gen = generation_config_for(tokenizer)  # stops at <|im_end|> (chat turns) and <|endoftext|> (text)
        with atomic_directory(init, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            gen.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        n = sum(p.numel() for p in model.parameters())
        self.console.print(f"tiny Qwen3: {n / 1e6:.2f} M parameters, vocabulary {len(tokenizer)} -> {init}")

    def score_model(self, model: str, name: str) -> dict[int, dict]:
        from wdl.scoring import score_dataset

        out_path = self.paths["scores"] / f"{name}.jsonl"
        scores = score_dataset(
            model,
            self.dataset("train"),
            out_path=out_path,
            tokens_per_micro_batch=self.cfg.scoring.tokens_per_micro_batch,
            dtype=self.cfg.scoring.dtype,
        )
        if self.ranks.is_main:
            import numpy as np

            h = np.array([v["entropy"] for v in scores.values()])
            self.console.print(
                f"scored {name} ({model}): {len(scores)} samples, mean entropy {h.mean():.4f} -> {out_path}"
            )
        return scores

    def phase_score_base(self) -> None:
        self.score_model(self.base_model, "base")

    def phase_sft(self) -> dict:
        return self._train("sft", self.base_model, self.dataset("train"), self.cfg.sft, self.paths["sft"])

    def phase_score_sft(self) -> None:
        self._require(self.paths["sft"], "sft")
        self.score_model(str(self.paths["sft"]), "sft")

    def phase_score_third(self) -> None:
        self.score_model(self.cfg.sampling.brownboost.third_model, "third")

    def phase_weights(self) -> None:
        if self.ranks.is_main:
            from wdl.weights_phase import compute_weights

            summary = compute_weights(self.cfg.sampling, self.paths["scores"], self.paths["sampling"],
                                      brownboost=self.cfg.sampling.scheme == "brownboost")
            self.console.print(summary)

    def phase_joint(self) -> dict:
        self._require(self.paths["sampling"] / "resampled.json", "weights")
        return self._train("joint", str(self.paths["sft"]), self.resampled_dataset(), self.cfg.joint,
                           self.paths["wmss"], weak=self.base_model)

    def phase_sft_continued(self) -> dict:
        # The fair baseline: the same start (M1), data, schedule and number of steps as joint, without mixing.
        self._require(self.paths["sampling"] / "resampled.json", "weights")
        return self._train("sft_continued", str(self.paths["sft"]), self.resampled_dataset(), self.cfg.joint,
                           self.paths["sft_continued"])

    # --------------------------------------------------------------------------------------------- eval
    def eval_config(self):
        ev = self.cfg.eval
        if ev.progress and not sys.stdout.isatty():  # progress bars in a log file are one endless line
            ev = dataclasses.replace(ev, progress=False)
        if self.cfg.synthetic.enabled and self.cfg.synthetic.n_eval > 0:
            from wdl.eval import BenchmarkSpec

            spec = BenchmarkSpec(name="synthetic", path=str(self.paths["data"] / "eval.json"), format="gsm8k")
            ev = dataclasses.replace(ev, benchmarks=[spec, *[b for b in ev.benchmarks if b.name != "synthetic"]])
        return ev

    def check_eval_sets(self) -> None:
        """Read every benchmark before any training: a missing or malformed set fails now, not after hours."""
        from wdl.eval import load_benchmark

        ev = self.cfg.eval
        if not ev.benchmarks and not (self.cfg.synthetic.enabled and self.cfg.synthetic.n_eval > 0):
            raise PipelineError("eval.benchmarks: no benchmarks to evaluate on; list them (see docs/config.md) or "
                                "set run.eval=false")
        for spec in ev.benchmarks:
            try:
                load_benchmark(spec, ev)
            except (OSError, ValueError) as e:
                raise PipelineError(f"eval.benchmarks: {spec.name}: {e} (or set run.eval=false)") from None

    def eval_models(self) -> dict[str, str]:
        models = {}
        if self.cfg.run.eval_base:
            models["base"] = self.base_model
        models["sft"] = str(self.paths["sft"])
        if self.cfg.run.sft_continued:
            models["sft_continued"] = str(self.paths["sft_continued"])
        models["wmss"] = str(self.paths["wmss"])
        return models

    def phase_eval(self) -> None:
        if not self.ranks.is_main:
            return
        ev = self.eval_config()
        fingerprint = {k: v for k, v in to_dict(ev).items() if k != "progress"}  # what changes results
        for name, path in self.eval_models().items():
            marker = self.marker(f"eval.{name}")
            if marker.is_file():
                done = json.loads(marker.read_text(encoding="utf-8"))
                if done.get("eval_config") == fingerprint and done.get("model") == path:
                    self.console.print(f"[dim]eval {name}: complete, skipped[/dim]")
                    continue
            self.console.print(f"evaluating {name} ({path})")
            t0 = time.perf_counter()
            out_dir = self.paths["eval"] / name
            if self.ranks.world > 1:
                results = self._evaluate_in_subprocess(name, out_dir)
            else:
                from wdl.eval import evaluate_model

                results = evaluate_model(path, ev, out_dir)
            results = {b: {**r, "accuracy": float(r["accuracy"]), "n": int(r["n"])} for b, r in results.items()}
            atomic_write_json(out_dir / "results.json", results)
            self._mark_done(f"eval.{name}", time.perf_counter() - t0, model=path, eval_config=fingerprint,
                            results=results)

    def _evaluate_in_subprocess(self, name: str, out_dir: Path) -> dict:
        """A clean process for the evaluator (vLLM must not inherit this process's torchrun environment or
        its training-time GPU memory)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                            "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")}
        cmd = [sys.executable, "-m", "wdl.pipeline", "evaluate", str(self.out), name]
        subprocess.run(cmd, env=env, check=True)
        return json.loads((out_dir / "results.json").read_text(encoding="utf-8"))

    def evaluate_one(self, name: str) -> None:
        from wdl.eval import evaluate_model

        out_dir = self.paths["eval"] / name
        results = evaluate_model(self.eval_models()[name], self.eval_config(), out_dir)
        atomic_write_json(out_dir / "results.json", results)

    # ------------------------------------------------------------------------------------------- report
    def collect_report(self) -> dict:
        from wdl.io import read_jsonl
        from wdl.report import environment, training_summary

        timings, phases = {}, {}
        for p in sorted(self.paths["markers"].glob("*.json")):
            m = json.loads(p.read_text(encoding="utf-8"))
            phases[m["phase"]] = {k: v for k, v in m.items() if k not in ("phase", "results", "eval_config")}
        for name in [*PHASES, *(f"eval.{m}" for m in EVAL_ORDER)]:
            if name in phases:
                timings[name] = phases[name]["seconds"]
        evals = {}
        for name in EVAL_ORDER:
            f = self.marker(f"eval.{name}")
            if f.is_file():
                evals[name] = json.loads(f.read_text(encoding="utf-8"))["results"]
        logs = {ph: read_jsonl(self.paths["logs"] / f"{ph}.jsonl") for ph in TRAINING_PHASES}
        logs = {ph: rows for ph, rows in logs.items() if rows}
        sampling = None
        resampled = self.paths["sampling"] / "resampled.json"
        if resampled.is_file():
            sampling = {k: v for k, v in json.loads(resampled.read_text(encoding="utf-8")).items() if k != "ids"}
        return {
            "eval": evals,
            "timings": timings,
            "phases": phases,
            "training": {ph: training_summary(rows) for ph, rows in logs.items()},
            "sampling": sampling,
            "config": to_dict(self.cfg),
            "environment": environment(),
            "_logs": logs,
        }

    def write_report(self, *, print_summary: bool = False) -> dict:
        from wdl.report import plot_training, write_report
        from wdl.report import print_summary as show

        report = self.collect_report()
        logs = report.pop("_logs")
        report["plots"] = plot_training({ph: logs[ph] for ph in logs if ph != "pretrain"}, self.paths["plots"])
        write_report(self.out, report)
        if print_summary:
            show(report, self.console)
            self.console.print(f"report: {self.out / 'report.md'}  ({self.out / 'report.json'})")
        return report


def _main(argv: list[str]) -> None:
    """`python -m wdl.pipeline evaluate DIR MODEL`: one model's eval in a clean process (used by phase eval
    under torchrun)."""
    from wdl.config import load_pipeline_config

    if len(argv) != 3 or argv[0] != "evaluate":
        raise SystemExit("usage: python -m wdl.pipeline evaluate RUN_DIR MODEL")
    out, name = Path(argv[1]), argv[2]
    cfg = load_pipeline_config(out / "config.yaml")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    Pipeline(cfg, out).evaluate_one(name)


if __name__ == "__main__":
    _main(sys.argv[1:])

