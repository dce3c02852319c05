#!/usr/bin/env python
"""Render loss-benchmark results: a compact table, a markdown summary (runs, targets, all rows) and a PNG.

    python bench/plot.py RESULTS.jsonl [MORE.jsonl ...] --out DIR     # writes DIR/kernel_bench.png, DIR/summary.md

When a (stage, case, implementation) triple occurs more than once, the last row wins (files are read in order).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):
    _root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_root), str(_root / "kernels")]

from bench.env import GIB  # noqa: E402
from bench.targets import format_verdicts  # noqa: E402
from wdl.io import atomic_write_bytes, atomic_write_text, read_jsonl  # noqa: E402

IMPL_ORDER = ("cublas_gemm", "torch_mm", "ours_triton_fast", "ours_triton_lean", "ours_torch_fast", "ours_torch_lean",
              "eager", "compile_chunked", "compile_chunked_gif", "liger", "liger_fp32acc", "cce", "cce_nofilter")
COLORS = {"cublas_gemm": "#444444", "torch_mm": "#444444", "ours_triton_fast": "#d62728",
          "ours_triton_lean": "#ff9896", "ours_torch_fast": "#d62728", "ours_torch_lean": "#ff9896",
          "eager": "#7f7f7f", "compile_chunked": "#1f77b4", "compile_chunked_gif": "#aec7e8", "liger": "#2ca02c",
          "liger_fp32acc": "#98df8a", "cce": "#9467bd", "cce_nofilter": "#c5b0d5"}


def load_rows(paths) -> list[dict]:
    """Rows of the given JSONL files; for a repeated (stage, case, impl) the last one is kept, in first-seen order."""
    latest: OrderedDict[tuple, dict] = OrderedDict()
    for p in paths:
        for r in read_jsonl(p):
            latest[(r.get("stage"), r.get("case"), r.get("impl"))] = r
    return list(latest.values())


def _order(name: str) -> int:
    base = name.split("[")[0]
    return IMPL_ORDER.index(base) if base in IMPL_ORDER else len(IMPL_ORDER)


def _groups(rows) -> OrderedDict:
    """(stage, case label) -> {impl: row}, measurement rows only (gemm rows are looked up by shape)."""
    out: OrderedDict[tuple, dict] = OrderedDict()
    for r in rows:
        if r.get("task") != "gemm":
            out.setdefault((r.get("stage"), r["case"]), {})[r["impl"]] = r
    for group in out.values():
        ordered = sorted(group.items(), key=lambda kv: (_order(kv[0]), kv[0]))
        group.clear()
        group.update(ordered)
    return out


def gemm_for(rows, r) -> dict | None:
    """The roofline row of r's logits shape, preferring one measured in r's stage."""
    found = None
    for g in rows:
        same_k = (g.get("hs") or 0) + (g.get("hw") or 0) == (r.get("hs") or 0) + (r.get("hw") or 0)
        if (g.get("task") == "gemm" and g.get("n") == r.get("n") and g.get("vocab") == r.get("vocab") and same_k
                and g.get("dtype") == r.get("dtype") and g.get("device_type") == r.get("device_type")):
            if g.get("stage") == r.get("stage"):
                return g
            found = found or g
    return found


def _fmt(v, spec=".1f", none="-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if spec == ".1f" and 0 < abs(v) < 0.1:
        spec = ".2g"  # CPU-sized numbers
    return format(v, spec)


def _gib(v) -> str:
    return "-" if v is None else f"{v / GIB:.2f}"


def _status(r) -> str:
    s = r.get("status") or "?"
    if s == "ok" and r.get("check_ok") is False:
        s = "ok!"  # timed, but its correctness check failed (approximate baseline)
    if r.get("status") == "ok" and r.get("rated") is False:
        s += " (info)"
    return s


def _ours(group: dict, mode: str) -> dict | None:
    """Our row of `mode` that speed-ups are quoted for: Triton on CUDA, the torch backend on a CPU (where
    Triton runs in its interpreter, a correctness tool, not a fast path)."""
    rows = list(group.values())
    engine = "torch" if any(r.get("device_type") == "cpu" for r in rows) else "triton"
    r = group.get(f"ours_{engine}_{mode}")
    return r if r is not None and r.get("status") == "ok" else None


HEAD = ["stage", "case", "impl", "status", "ms", "p20-p80", "TFLOP/s", "%GEMM", "counted", "extraGiB", "peakGiB",
        "fast x", "lean x"]


def _counted(r) -> str:
    """The GEMM work counted by torch, in units of N*V*(Hs+Hw) (6 = no recompute; '-' where not counted)."""
    ratio = r.get("flops_counted_ratio")
    if ratio is None:
        return "-"
    return f"{ratio * (6 if r.get('task') == 'fwdbwd' else 2):.2f}NVH"


def table_lines(rows) -> list[list[str]]:
    lines = []
    for (stage, label), group in _groups(rows).items():
        fast, lean = _ours(group, "fast"), _ours(group, "lean")
        for name, r in group.items():
            ok = r.get("status") == "ok" and r.get("kind") == "baseline"
            speed = [r["ms_median"] / ours["ms_median"] if ok and ours else None for ours in (fast, lean)]
            lines.append([stage or "-", label, name, _status(r), _fmt(r.get("ms_median"), ".2f"),
                          f"{_fmt(r.get('ms_p20'), '.2f')}-{_fmt(r.get('ms_p80'), '.2f')}" if r.get("ms_p20") else "-",
                          _fmt(r.get("tflops")), _fmt(r.get("pct_gemm")), _counted(r), _gib(r.get("mem_extra_bytes")),
                          _gib(r.get("mem_peak_bytes") or r.get("mem_needed_bytes_min")),
                          *(_fmt(s, ".2f") + ("x" if s else "") for s in speed)])
        g = gemm_for(rows, next(iter(group.values())))
        if g is not None and g.get("status") == "ok":
            lines.append([stage or "-", label, g["impl"], "ok", _fmt(g.get("ms_median"), ".2f"),
                          f"{_fmt(g.get('ms_p20'), '.2f')}-{_fmt(g.get('ms_p80'), '.2f')}", _fmt(g.get("tflops")),
                          "100.0", "-", "-", "-", "-", "-"])
    return lines


def format_table(rows, markdown: bool = False) -> str:
    """One line per (stage, case, implementation): median ms, TFLOP/s, % of the GEMM rate, memory, speed-ups."""
    lines = table_lines(rows)
    if not lines:
        return "(no results)"
    if markdown:
        out = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEAD)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*HEAD)] + [fmt.format(*line) for line in lines])


def describe_runs(rows) -> list[str]:
    envs = OrderedDict()
    for r in rows:
        envs.setdefault(r.get("run_id"), r)
    return [f"- run `{rid}`: {r.get('label')}; {r.get('device_name')} ({r.get('device_type')}), "
            f"commit `{(r.get('git_commit') or 'unknown')[:12]}`{' (dirty)' if r.get('git_dirty') else ''}, "
            f"torch {r.get('torch_version')}, triton {r.get('triton_version')}, CUDA {r.get('cuda_version')}, "
            f"driver {r.get('driver_version')}, liger-kernel {r.get('liger_kernel_version')}, "
            f"cut-cross-entropy {r.get('cut_cross_entropy_version')}, {r.get('torch_threads')} torch threads, "
            f"{r.get('date_utc')}; GEMM paths {r.get('gemm_paths')}" for rid, r in envs.items()]


LEGEND = ("TFLOP/s on 6*N*V*(Hs+Hw) for fwdbwd, 2*N*V*(Hs+Hw) for fwd/score; %GEMM against the GEMM rate "
          "(cuBLAS; torch.mm on a CPU) measured at [N, Hs+Hw] x [Hs+Hw, V] in the same stage; extra = peak memory "
          "beyond the inputs and the returned outputs (CUDA only); 'fast x' / 'lean x' = how many times faster our "
          "fast / lean mode is than that row, same stage; 'ok!' = timed but failed its correctness check; "
          "'(info)' = never rated (approximate).")


def write_summary(rows, path: Path, which: str = "all") -> None:
    parts = ["# Kernel benchmark summary", "", *describe_runs(rows), "", LEGEND, "", "## Targets", "",
             format_verdicts(rows, which), "", "## All measurements", "", format_table(rows, markdown=True), ""]
    atomic_write_text(path, "\n".join(parts))


def _shape_key(r):
    return (r.get("heads"), r.get("hs"), r.get("n"), r.get("ignore_frac") or 0.0)


def plot(rows, path: Path) -> None:
    """Throughput and extra memory per shape, one bar per implementation, fwdbwd and score rows."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = ("fwdbwd", "score")
    fig, axes = plt.subplots(len(tasks), 2, figsize=(16, 5.2 * len(tasks)), squeeze=False)
    device = next((r.get("device_name") for r in rows if r.get("device_name")), "?")
    for i, task in enumerate(tasks):
        trows = [r for r in rows if r.get("task") == task and "[" not in r["impl"]]
        shapes = sorted({_shape_key(r) for r in trows})
        impls = [m for m in IMPL_ORDER if any(r["impl"] == m and r.get("status") == "ok" for r in trows)]
        ax_t, ax_m = axes[i]
        if not shapes or not impls:
            for ax in (ax_t, ax_m):
                ax.text(0.5, 0.5, f"no {task} results", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
            continue
        width = 0.8 / len(impls)
        by = {(_shape_key(r), r["impl"]): r for r in trows if r.get("status") == "ok"}
        any_mem = False
        for j, impl in enumerate(impls):
            off = [x - 0.4 + (j + 0.5) * width for x in range(len(shapes))]
            tf = [(by.get((s, impl)) or {}).get("tflops") or 0.0 for s in shapes]
            mem = [((by.get((s, impl)) or {}).get("mem_extra_bytes") or 0) / GIB for s in shapes]
            ax_t.bar(off, tf, width, label=impl, color=COLORS.get(impl))
            if any(mem):
                any_mem = True
                ax_m.bar(off, [m if m > 0 else float("nan") for m in mem], width, label=impl, color=COLORS.get(impl))
        names = [f"{'2x' if h == 2 else '1x'}{hs}\nN={n}" + (f"\nign={ig:g}" if ig else "") for h, hs, n, ig in shapes]
        flop = "6NV(Hs+Hw)" if task == "fwdbwd" else "2NV(Hs+Hw)"
        ax_t.set_title(f"{task}: TFLOP/s on {flop}")
        ax_t.set_xticks(list(range(len(shapes))), names, fontsize=8)
        ax_t.legend(fontsize=7, ncol=2)
        ax_m.set_title(f"{task}: extra memory beyond inputs and outputs (GiB, log)")
        ax_m.set_xticks(list(range(len(shapes))), names, fontsize=8)
        if any_mem:
            ax_m.set_yscale("log")
            ax_m.legend(fontsize=7, ncol=2)
        else:
            ax_m.text(0.5, 0.5, "no memory counters (CPU run)", ha="center", va="center", transform=ax_m.transAxes)
            ax_m.set_axis_off()
    fig.suptitle(f"wdl_kernels mixed linear cross-entropy — {device}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.jsonl files written by the loss benchmark")
    ap.add_argument("--out", help="directory for kernel_bench.png and summary.md (default: beside the first file)")
    ap.add_argument("--no-png", action="store_true")
    args = ap.parse_args(argv)
    for p in args.results:
        if not Path(p).is_file():
            ap.error(f"{p}: no such file")
    rows = load_rows(args.results)
    out = Path(args.out) if args.out else Path(args.results[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    if not args.no_png:
        plot(rows, out / "kernel_bench.png")
    write_summary(rows, out / "summary.md")
    print(format_table(rows))
    print()
    print(format_verdicts(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
