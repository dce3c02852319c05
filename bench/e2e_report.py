"""The end-to-end benchmark's report: per-setting summary, target verdicts and plot, from its rows.

    bench/bench_e2e.py --report e2e.jsonl --out DIR     # DIR/e2e_summary.md and DIR/e2e.png

Targets (one 80 GB GPU, two Qwen3-1.7B models trained jointly unless stated): the longest sequence of the
fused path >= 4x the reference path's; tokens/s >= 1.3x the reference path's at each path's best setting;
MFU >= 40%; two Qwen3-4B models, weak frozen, with optimizer offload, train at >= 8192 tokens.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from wdl.io import atomic_write_bytes, atomic_write_text, read_jsonl

PATHS = ("fused", "reference")


def report(jsonl: Path, out: Path, plot_png: bool = True) -> int:
    """OUT/e2e_summary.md (summary and target verdicts) and OUT/e2e.png over rows recorded earlier, e.g. by
    several invocations into one file, or one cut short by its time limit."""
    if not jsonl.is_file():
        print(f"bench_e2e: --report {jsonl}: no such file", file=sys.stderr)
        return 2
    rows = read_jsonl(jsonl)
    if not rows:
        print(f"bench_e2e: --report {jsonl}: no rows", file=sys.stderr)
        return 2
    write_report(rows, out, "e2e_summary.md", plot_png)
    return 0


def write_report(rows: list[dict], out: Path, name: str, plot_png: bool) -> None:
    if plot_png:
        plot(rows, out / "e2e.png")
    summary = summarize(rows)
    if summary:
        summary += "\n" + format_targets(rows)
        atomic_write_text(out / name, summary)
        print(summary)


def format_targets(rows: list[dict]) -> str:
    """The end-to-end GPU targets, each judged from the measured CUDA rows only (a CPU run measures none)."""
    rows = [r for r in rows if r["device_type"] == "cuda"]
    ok = [r for r in rows if r["status"] == "ok"]

    def best(kind, path, **match):
        cands = [r for r in ok if r["kind"] == kind and r["path"] == path
                 and all(r.get(k) == v for k, v in match.items())]
        key = "seq_len" if kind == "max_seq" else "tokens_per_s"
        return max(cands, key=lambda r: r[key]) if cands else None

    lines = ["| target (one 80 GB GPU) | measured | verdict |", "|---|---|---|"]

    def add(name, measured, passed):
        verdict = "not measured" if passed is None else ("PASS" if passed else "FAIL")
        lines.append(f"| {name} | {measured} | {verdict} |")

    j = dict(model="1.7b", mode="joint")
    f, r = best("max_seq", "fused", **j), best("max_seq", "reference", **j)
    add("2x1.7B joint: longest sequence >= 4x the reference path's",
        f"{f['seq_len']} vs {r['seq_len']}" if f and r else "-",
        f["seq_len"] >= 4 * r["seq_len"] if f and r else None)
    # tokens/s at each path's best fitting setting, at the longest length both paths ran
    joint = {p: [x for x in ok if x["kind"] == "throughput" and x["path"] == p
                 and (x["model"], x["mode"]) == ("1.7b", "joint")] for p in PATHS}
    both = sorted({x["seq_len"] for x in joint["fused"]} & {x["seq_len"] for x in joint["reference"]})
    f = best("throughput", "fused", seq_len=both[-1], **j) if both else None
    r = best("throughput", "reference", seq_len=both[-1], **j) if both else None
    add("2x1.7B joint: tokens/s >= 1.3x the reference path's (best settings)",
        f"{f['tokens_per_s']:.0f} vs {r['tokens_per_s']:.0f} tok/s at {both[-1]}" if f and r else "-",
        f["tokens_per_s"] >= 1.3 * r["tokens_per_s"] if f and r else None)
    fm = [x for x in joint["fused"] if x.get("mfu") is not None]
    top = max(fm, key=lambda x: x["mfu"]) if fm else None
    add("2x1.7B joint: MFU >= 40%", f"{100 * top['mfu']:.1f}% at {top['seq_len']}" if top else "-",
        top["mfu"] >= 0.40 if top else None)
    off = [x for x in rows if x["kind"] == "throughput" and x["model"] == "4b" and x["mode"] == "joint_frozen"
           and x["path"] == "fused" and (x.get("offload_optimizer") or x.get("fsdp_cpu_offload"))
           and x["seq_len"] >= 8192]
    fits = [x for x in off if x["status"] == "ok"]
    add("2x4B, weak frozen, optimizer offload: trains at >= 8192 tokens",
        f"{max(x['seq_len'] for x in fits)} tokens ok" if fits else ("OOM" if off else "-"),
        bool(fits) if off else None)
    return "\n".join(lines) + "\n"


def summarize(rows: list[dict]) -> str:
    """Markdown: per (model, mode, sequence length) each path's best setting (micro-batch, AC) and the ratios the
    issue's targets are stated in; per (model, mode) the longest fitting sequence of each path."""
    ok = [r for r in rows if r["kind"] == "throughput" and r["status"] == "ok"]
    lines = []
    keys = sorted({(r["model"], r["mode"], r["seq_len"]) for r in ok}, key=lambda k: (k[0], k[1], k[2]))
    if keys:
        lines += ["| model | mode | seq | fused tok/s (mb, AC) | reference tok/s (mb, AC) | speed-up | fused MFU |",
                  "|---|---|---|---|---|---|---|"]
    for model, mode, seq in keys:
        best = {}
        for path in PATHS:
            cands = [r for r in ok if (r["model"], r["mode"], r["seq_len"], r["path"]) == (model, mode, seq, path)]
            best[path] = max(cands, key=lambda r: r["tokens_per_s"]) if cands else None

        def cell(r):
            if r is None:
                return "OOM / not run"
            return f"{r['tokens_per_s']:.0f} ({r['micro_batch']}, {'on' if r['activation_checkpointing'] else 'off'})"

        f, ref = best["fused"], best["reference"]
        ratio = f"{f['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if f and ref else "-"
        mfu = f"{100 * f['mfu']:.1f}%" if f and f.get("mfu") is not None else "-"
        lines.append(f"| {model} | {mode} | {seq} | {cell(f)} | {cell(ref)} | {ratio} | {mfu} |")
    maxes = [r for r in rows if r["kind"] == "max_seq"]
    if maxes:
        lines += ["", "| model | mode | fused longest seq | reference longest seq | ratio |", "|---|---|---|---|---|"]
        for model, mode in sorted({(r["model"], r["mode"]) for r in maxes}):
            best = {p: max((r["seq_len"] or 0 for r in maxes if (r["model"], r["mode"], r["path"]) == (model, mode, p)),
                           default=0) for p in PATHS}
            ratio = f"{best['fused'] / best['reference']:.2f}x" if best["fused"] and best["reference"] else "-"
            lines.append(f"| {model} | {mode} | {best['fused'] or 'OOM'} | {best['reference'] or 'OOM'} | {ratio} |")
    return "\n".join(lines) + "\n" if lines else ""


def plot(rows: list[dict], out: Path) -> Path | None:
    """Tokens/s and peak memory against sequence length, one line per (model, mode, path, AC)."""
    ok = [r for r in rows if r["kind"] == "throughput" and r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = sorted({(r["model"], r["mode"], r["path"], r["activation_checkpointing"]) for r in ok})
    for key in keys:
        pts = sorted((r["seq_len"], r["tokens_per_s"], r["peak_mem_gib"]) for r in ok
                     if (r["model"], r["mode"], r["path"], r["activation_checkpointing"]) == key)
        label = f"{key[0]} {key[1]} {key[2]}" + (" AC" if key[3] else "")
        style = "-" if key[2] == "fused" else "--"
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=label)
        if all(p[2] is not None for p in pts):
            axes[1].plot([p[0] for p in pts], [p[2] for p in pts], style, marker="o", label=label)
    axes[0].set(xlabel="sequence length", ylabel="tokens / s", title="training throughput", xscale="log")
    axes[1].set(xlabel="sequence length", ylabel="peak GiB", title="peak memory (CUDA)", xscale="log")
    if not any(r["peak_mem_gib"] is not None for r in ok):
        axes[1].text(0.5, 0.5, "no CUDA memory counters (CPU run)", ha="center", va="center",
                     transform=axes[1].transAxes)
    axes[0].legend(fontsize=7)
    env = ok[0]
    fig.suptitle(f"{env.get('device_name')} · {str(env.get('git_commit'))[:8]} · torch {env.get('torch_version')}",
                 fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out

