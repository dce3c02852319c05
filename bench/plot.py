#!/usr/bin/env python
"""Render kernel-benchmark results: a PNG (throughput and memory by shape, ours vs baselines), a markdown
summary (per-case tables and the issue's targets), and a compact text table on stdout.

    python bench/plot.py RESULTS.jsonl [MORE.jsonl ...] --out DIR     # writes DIR/kernel_bench.png, DIR/summary.md

When a (case, implementation) pair occurs more than once, the last row wins (files are read in order).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import OrderedDict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import GIB, read_jsonl  # noqa: E402

OURS_MAIN = "ours_triton"
IMPL_ORDER = ("cublas_gemm", "torch_mm", "ours_triton", "ours_torch", "eager", "compile_chunked",
              "compile_chunked_gif", "liger", "liger_fp32acc", "cce", "cce_nofilter")
COLORS = {"cublas_gemm": "#444444", "torch_mm": "#444444", "ours_triton": "#d62728", "ours_torch": "#ff9896",
          "eager": "#7f7f7f", "compile_chunked": "#1f77b4", "compile_chunked_gif": "#aec7e8", "liger": "#2ca02c",
          "liger_fp32acc": "#98df8a", "cce": "#9467bd", "cce_nofilter": "#c5b0d5"}


def load_rows(paths) -> list[dict]:
    """Rows of the given JSONL files; for repeated (case, impl) keys the last one is kept, in first-seen order."""
    latest: OrderedDict[tuple, dict] = OrderedDict()
    for p in paths:
        for r in read_jsonl(p):
            latest[(r.get("case"), r.get("impl"))] = r
    return list(latest.values())


def _cases(rows) -> OrderedDict:
    """case label -> {impl: row}, measurement rows only (gemm rows are looked up by shape)."""
    out: OrderedDict[str, dict] = OrderedDict()
    for r in rows:
        if r.get("mode") != "gemm" and r.get("impl") != "all":
            out.setdefault(r["case"], {})[r["impl"]] = r
    for case in out.values():
        ordered = sorted(case.items(), key=lambda kv: IMPL_ORDER.index(kv[0]) if kv[0] in IMPL_ORDER else 99)
        case.clear()
        case.update(ordered)
    return out


def _gemm_for(rows, r) -> dict | None:
    for g in rows:
        same_k = g.get("hs", 0) + g.get("hw", 0) == r.get("hs", 0) + r.get("hw", 0)
        if (g.get("mode") == "gemm" and g.get("n") == r.get("n") and g.get("vocab") == r.get("vocab") and same_k
                and g.get("dtype") == r.get("dtype")):
            return g
    return None


def _fmt(v, spec=".1f", none="-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if spec == ".1f" and 0 < abs(v) < 0.1:
        spec = ".2g"  # CPU-sized numbers
    return format(v, spec)


def main_ours(rows) -> str:
    """The implementation the speed-ups are quoted for: ours_triton on CUDA, ours_torch on the CPU
    (where Triton runs in its interpreter, a correctness tool, not a fast path)."""
    rows = list(rows)
    on_cpu = any(r.get("device_type") == "cpu" for r in rows)
    return "ours_torch" if on_cpu else OURS_MAIN


def _gib(v) -> str:
    return "-" if v is None else f"{v / GIB:.2f}"


def _status(r) -> str:
    s = r.get("status") or "?"
    if s == "ok" and r.get("check_ok") is False:
        s = "ok!"  # timed, but its correctness check failed (approximate baseline)
    return s


def format_table(rows, markdown: bool = False) -> str:
    """One line per (case, implementation): median ms, TFLOP/s, % of the GEMM rate, memory, our speed-up."""
    cases = _cases(rows)
    head = ["case", "impl", "status", "ms", "p20-p80", "TFLOP/s", "%GEMM", "extraGiB", "peakGiB", "ours x"]
    if any(r.get("device_type") == "cpu" for r in rows):
        head[-1] = "ours_torch x"
    lines = []
    for label, impls in cases.items():
        ours = impls.get(main_ours(impls.values()))
        for name, r in impls.items():
            speed = None
            both_ok = ours and ours.get("status") == "ok" and r.get("status") == "ok"
            if both_ok and ours is not r and r.get("kind") == "baseline":
                speed = ours.get(f"speedup_vs_{name}")
            lines.append([label, name, _status(r), _fmt(r.get("ms_median"), ".2f"),
                          f"{_fmt(r.get('ms_p20'), '.2f')}-{_fmt(r.get('ms_p80'), '.2f')}" if r.get("ms_p20") else "-",
                          _fmt(r.get("tflops")), _fmt(r.get("pct_gemm")), _gib(r.get("mem_extra_bytes")),
                          _gib(r.get("mem_peak_bytes") or r.get("mem_needed_bytes_min")),
                          _fmt(speed, ".2f") + ("x" if speed else "")])
        g = _gemm_for(rows, next(iter(impls.values())))
        if g is not None and g.get("status") == "ok":
            lines.append([label, g["impl"], "ok", _fmt(g.get("ms_median"), ".2f"),
                          f"{_fmt(g.get('ms_p20'), '.2f')}-{_fmt(g.get('ms_p80'), '.2f')}", _fmt(g.get("tflops")),
                          "100.0", "-", "-", "-"])
    if not lines:
        return "(no results)"
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*line) for line in lines])


# --------------------------------------------------------------------------------------------------------
# The issue's targets (GPU, bf16, V = 151936)

TARGET_N, TARGET_H, TARGET_V = 16384, 2560, 151936
EXTRA_MEMORY_LIMIT = 512e6  # bytes: "extra memory beyond the inputs and the returned gradients <= 512 MB"


def _find(rows, mode, hw, impl):
    for r in reversed(rows):
        if (r.get("mode") == mode and r.get("n") == TARGET_N and r.get("hs") == TARGET_H and r.get("hw") == hw
                and r.get("vocab") == TARGET_V and r.get("dtype") == "bf16" and r.get("impl") == impl):
            return r
    return None


def _ratio_target(name, value, limit, at_least=True, unit="x") -> dict:
    if value is None:
        return {"target": name, "value": "-", "verdict": "not measured"}
    ok = value >= limit if at_least else value <= limit
    shown = f"{value:.2f}x" if unit == "x" else (f"{value:.1f}%" if unit == "%" else unit.format(value))
    return {"target": name, "value": shown, "verdict": "PASS" if ok else "FAIL"}


def target_checks(rows) -> list[dict]:
    """Each target of issue 2 with its measured value: {"target", "value", "verdict"} (PASS / FAIL / not measured)."""

    def ok(r):
        return r if r is not None and r.get("status") == "ok" else None

    two = ok(_find(rows, "fwdbwd", TARGET_H, OURS_MAIN)) or {}
    one = ok(_find(rows, "fwdbwd", 0, OURS_MAIN)) or {}
    score = ok(_find(rows, "score", 0, OURS_MAIN)) or {}
    out = [_ratio_target("two 4B heads N=16384 fwd+bwd: >= 70% of cuBLAS (6*N*V*(Hw+Hs))", two.get("pct_gemm"), 70,
                         unit="%")]
    for base in ("compile_chunked", "compile_chunked_gif"):
        out.append(_ratio_target(f"two heads: >= 1.1x faster than {base}", two.get(f"speedup_vs_{base}"), 1.1))
        b = ok(_find(rows, "fwdbwd", TARGET_H, base)) or {}
        ratio = None
        if two.get("mem_extra_bytes") is not None and b.get("mem_extra_bytes"):
            ratio = two["mem_extra_bytes"] / b["mem_extra_bytes"]
        out.append(_ratio_target(f"two heads: <= 1/4 of {base}'s extra memory", ratio, 0.25, at_least=False,
                                 unit="{:.3f} of its extra memory"))
    out.append(_ratio_target("two heads: >= 3x faster than Liger on the concatenation", two.get("speedup_vs_liger"), 3))
    extra = two.get("mem_extra_bytes")
    out.append(_ratio_target("two heads: extra memory <= 512 MB (beyond inputs and returned gradients)",
                             None if extra is None else extra / 1e6, EXTRA_MEMORY_LIMIT / 1e6, at_least=False,
                             unit="{:.0f} MB"))
    for base in ("cce", "cce_nofilter"):
        out.append(_ratio_target(f"single head: >= 1.2x faster than {base}", one.get(f"speedup_vs_{base}"), 1.2))
    out.append(_ratio_target("forward-only scoring (1 head): >= 70% of cuBLAS (2*N*V*H)", score.get("pct_gemm"), 70,
                             unit="%"))
    return out


def format_targets(rows) -> str:
    lines = ["| target (issue 2) | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['verdict']} |" for t in target_checks(rows)]
    return "\n".join(lines)


def write_summary(rows, path: Path) -> None:
    from bench.common import atomic_write_text

    envs = OrderedDict()
    for r in rows:
        envs.setdefault(r.get("run_id"), r)
    parts = ["# Kernel benchmark summary", ""]
    for rid, r in envs.items():
        parts.append(f"- run `{rid}`: {r.get('label')}; {r.get('device_name')} ({r.get('device_type')}), "
                     f"commit `{(r.get('git_commit') or 'unknown')[:12]}`{' (dirty)' if r.get('git_dirty') else ''}, "
                     f"torch {r.get('torch_version')}, triton {r.get('triton_version')}, CUDA {r.get('cuda_version')}, "
                     f"driver {r.get('driver_version')}, liger-kernel {r.get('liger_kernel_version')}, "
                     f"cut-cross-entropy {r.get('cut_cross_entropy_version')}, {r.get('date_utc')}")
    parts += ["", "TFLOP/s on 6*N*V*(Hs+Hw) for fwdbwd, 2*N*V*(Hs+Hw) for fwd/score; %GEMM against the cuBLAS "
              "rate (torch.mm on a CPU) measured at [N, Hs+Hw] x [Hs+Hw, V] in the same run; extra = peak memory "
              "beyond the inputs and the returned outputs (CUDA only); 'ours x' = how many times faster "
              "ours_triton (ours_torch in a CPU run, where Triton runs in its interpreter) is than that row; "
              "'ok!' = timed but failed its correctness check (approximate baseline).",
              "", "## Targets", "", format_targets(rows),
              "", "## All measurements", "", format_table(rows, markdown=True), ""]
    atomic_write_text(path, "\n".join(parts))


# --------------------------------------------------------------------------------------------------------
# PNG


def _shape_key(r):
    return (r.get("heads"), r.get("hs"), r.get("n"))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = ("fwdbwd", "score")
    fig, axes = plt.subplots(len(modes), 2, figsize=(16, 5.2 * len(modes)), squeeze=False)
    device = next((r.get("device_name") for r in rows if r.get("device_name")), "?")
    label = next((r.get("label") for r in rows if r.get("label")), "")
    for i, mode in enumerate(modes):
        mrows = [r for r in rows if r.get("mode") == mode]
        shapes = sorted({_shape_key(r) for r in mrows}, key=lambda k: (k[0], k[1], k[2]))
        impls = [m for m in IMPL_ORDER
                 if any(r["impl"] == m and r.get("status") in ("ok", "OOM", "wrong", "error") for r in mrows)]
        ax_t, ax_m = axes[i]
        if not shapes:
            for ax in (ax_t, ax_m):
                ax.text(0.5, 0.5, f"no {mode} results", ha="center", va="center", transform=ax.transAxes)
                ax.set_axis_off()
            continue
        width = 0.8 / max(len(impls), 1)
        xs = range(len(shapes))
        by = {(_shape_key(r), r["impl"]): r for r in mrows}
        any_mem = False
        for j, impl in enumerate(impls):
            tf, mem = [], []
            for s in shapes:
                r = by.get((s, impl))
                ok = r is not None and r.get("status") == "ok"
                tf.append(r.get("tflops") if ok else 0.0)
                mem.append(r.get("mem_extra_bytes") / GIB if ok and r.get("mem_extra_bytes") is not None else 0.0)
            off = [x - 0.4 + (j + 0.5) * width for x in xs]
            ax_t.bar(off, tf, width, label=impl, color=COLORS.get(impl))
            if any(mem):
                any_mem = True
                ax_m.bar(off, [m if m > 0 else float("nan") for m in mem], width, label=impl, color=COLORS.get(impl))
            for x, s in zip(off, shapes, strict=True):
                r = by.get((s, impl))
                if r is not None and r.get("status") in ("OOM", "wrong", "error"):
                    ax_t.text(x, 0, r["status"], rotation=90, ha="center", va="bottom", fontsize=7)
        for k, s in enumerate(shapes):  # the measured GEMM rate of each shape as a black tick
            g = _gemm_for(rows, {"n": s[2], "vocab": next(r["vocab"] for r in mrows),
                                 "hs": s[1], "hw": s[1] if s[0] == 2 else 0, "dtype": mrows[0].get("dtype")})
            if g is not None and g.get("tflops"):
                gemm_label = "cuBLAS GEMM rate" if g["impl"] == "cublas_gemm" else "torch.mm rate"
                ax_t.hlines(g["tflops"], k - 0.45, k + 0.45, colors="black", linestyles="dashed",
                            label=None if k else gemm_label)
        names = [f"{'2x' if h == 2 else '1x'}{hs}\nN={n}" for h, hs, n in shapes]
        flop = "6NV(Hs+Hw)" if mode == "fwdbwd" else "2NV(Hs+Hw)"
        ax_t.set_title(f"{mode}: TFLOP/s on {flop}")
        ax_t.set_xticks(list(xs), names, fontsize=8)
        ax_t.legend(fontsize=7, ncol=2)
        ax_t.set_ylabel("TFLOP/s")
        ax_m.set_title(f"{mode}: extra memory beyond inputs and outputs (GiB, log)")
        ax_m.set_xticks(list(xs), names, fontsize=8)
        if any_mem:
            ax_m.set_yscale("log")
            ax_m.legend(fontsize=7, ncol=2)
        else:
            ax_m.text(0.5, 0.5, "no memory counters (CPU run)", ha="center", va="center", transform=ax_m.transAxes)
            ax_m.set_axis_off()
    fig.suptitle(f"wdl_kernels mixed linear cross-entropy — {device} — {label}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="results.jsonl files written by bench/bench_kernel.py")
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
    print(format_targets(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
