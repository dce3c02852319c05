"""The kernel's performance targets and their verdicts, computed from measured rows only.

A verdict is PASS or FAIL only when every row it needs was measured (status ok) on the device the target is
about; otherwise it reads "not measured". GPU targets use CUDA rows alone (a CPU rehearsal measures none of
them); the CPU targets use CPU rows of the torch backend. Ratios come from rows of the same stage of one run
(ours and the baseline measured side by side); "% of cuBLAS" divides by the GEMM rate measured in that stage at
the same logits shape. Approximate baselines (rated = False: filtered cut-cross-entropy) never enter a verdict.

GPU, bf16, V = 151936, two Qwen3-4B heads (Hs = Hw = 2560), exact gradients:
    fast   >= 85% of cuBLAS on 6*N*V*(Hs+Hw) at N >= 8192, >= 75% at N = 4096
    fast   >= 1.1x the faster torch.compile chunked loss, >= 1.1x Liger (fp32 accumulation), each N
    fast   >= 2x Liger (the faster of its two accumulation settings) at N = 4096
    lean   >= 60% of cuBLAS on 6NVH with <= 512 MB extra memory, 10% ignored labels (N = 16384)
    lean   >= 1.3x cut-cross-entropy without filtering (filter_eps=None), one head (N = 16384)
    score  >= 75% of cuBLAS on 2NVH (forward only, per-row stats; N = 16384)
CPU, the torch backend (rows of bench_kernel.py --preset cpu-modes): fast's counted FLOPs = 6NVH and lean's
= 8NVH (within 5%); fast's fwd+bwd time clearly below lean's at every shape (median ratio <= 0.9, and fast's
median under lean's 20th percentile).
"""

from __future__ import annotations

GPU_V, GPU_H = 151936, 2560
NS = (4096, 8192, 16384)
EXTRA_MEMORY_LIMIT = 512e6
COMPILE = ("compile_chunked", "compile_chunked_gif")
FLOP_TOLERANCE = 0.05


def _ok(r):
    return r is not None and r.get("status") == "ok"


def _gpu_rows(rows, task, n, hw, impl, ignore_frac=0.0):
    """Measured CUDA rows of one GPU target case, by stage."""
    out = {}
    for r in rows:
        if (r.get("device_type") == "cuda" and r.get("task") == task and r.get("n") == n and r.get("hs") == GPU_H
                and r.get("hw") == hw and r.get("vocab") == GPU_V and r.get("dtype") == "bf16"
                and r.get("impl") == impl and (r.get("ignore_frac") or 0.0) == ignore_frac and _ok(r)):
            out[r.get("stage")] = r
    return out


def _verdict(target: str, value: str, passed: bool | None) -> dict:
    return {"target": target, "value": value if passed is not None else "-",
            "verdict": "not measured" if passed is None else ("PASS" if passed else "FAIL")}


def _pct(target, rows, task, n, hw, impl, limit):
    found = _gpu_rows(rows, task, n, hw, impl)
    if not found:
        return _verdict(target, "", None)
    r = found.get("two-head") or found.get("one-head") or next(iter(found.values()))
    if r.get("pct_gemm") is None:
        return _verdict(target, "", None)
    return _verdict(target, f"{r['pct_gemm']:.1f}% ({r['ms_median']:.1f} ms)", r["pct_gemm"] >= limit)


def _versus(target, rows, n, hw, impl, baselines, limit):
    """ours / the fastest of `baselines`, both from one stage's rows."""
    ours = _gpu_rows(rows, "fwdbwd", n, hw, impl)
    for stage, r in ours.items():
        base = [b for name in baselines for s, b in _gpu_rows(rows, "fwdbwd", n, hw, name).items() if s == stage
                and b.get("rated", True)]
        if base:
            best = min(base, key=lambda b: b["ms_median"])
            ratio = best["ms_median"] / r["ms_median"]
            return _verdict(target, f"{ratio:.2f}x ({r['ms_median']:.1f} vs {best['impl']} {best['ms_median']:.1f} ms)",
                            ratio >= limit)
    return _verdict(target, "", None)


def gpu_verdicts(rows) -> list[dict]:
    out = []
    for n in NS:
        limit = 75 if n == 4096 else 85
        out.append(_pct(f"fast, N={n}: >= {limit}% of cuBLAS on 6NVH", rows, "fwdbwd", n, GPU_H,
                        "ours_triton_fast", limit))
    for n in NS:
        out.append(_versus(f"fast, N={n}: >= 1.1x torch.compile chunked (faster style)", rows, n, GPU_H,
                           "ours_triton_fast", COMPILE, 1.1))
        out.append(_versus(f"fast, N={n}: >= 1.1x Liger (fp32 accumulation)", rows, n, GPU_H, "ours_triton_fast",
                           ("liger_fp32acc",), 1.1))
    out.append(_versus("fast, N=4096: >= 2x Liger (faster accumulation setting)", rows, 4096, GPU_H,
                       "ours_triton_fast", ("liger", "liger_fp32acc"), 2.0))
    lean = _gpu_rows(rows, "fwdbwd", 16384, GPU_H, "ours_triton_lean", ignore_frac=0.1)
    target = "lean, N=16384, 10% ignored: >= 60% of cuBLAS on 6NVH at <= 512 MB extra"
    r = next(iter(lean.values()), None)
    if r is None or r.get("pct_gemm") is None or r.get("mem_extra_bytes") is None:
        out.append(_verdict(target, "", None))
    else:
        out.append(_verdict(target, f"{r['pct_gemm']:.1f}% at {r['mem_extra_bytes'] / 1e6:.0f} MB",
                            r["pct_gemm"] >= 60 and r["mem_extra_bytes"] <= EXTRA_MEMORY_LIMIT))
    out.append(_versus("lean, one head, N=16384: >= 1.3x cut-cross-entropy (filter_eps=None)", rows, 16384, 0,
                       "ours_triton_lean", ("cce_nofilter",), 1.3))
    out.append(_pct("scoring, N=16384: >= 75% of cuBLAS on 2NVH", rows, "score", 16384, GPU_H, "ours_triton_lean",
                    75))
    return out


CPU_STAGE = "cpu-modes"  # bench_kernel.py's GEMM-bound CPU preset (tiny smoke shapes are not GEMM-bound)


def _cpu_rows(rows, impl):
    return [r for r in rows if r.get("device_type") == "cpu" and r.get("stage") == CPU_STAGE and r.get("impl") == impl
            and r.get("task") == "fwdbwd" and _ok(r) and r.get("flops_counted") is not None]


def cpu_verdicts(rows) -> list[dict]:
    out = []
    fast, lean = _cpu_rows(rows, "ours_torch_fast"), _cpu_rows(rows, "ours_torch_lean")
    for name, found, want in (("fast", fast, 1.0), ("lean", lean, 4.0 / 3.0)):
        target = f"CPU {name}: counted FLOPs = {6 * want:.0f}NVH within 5%"
        if not found:
            out.append(_verdict(target, "", None))
            continue
        worst = max(found, key=lambda r: abs(r["flops_counted_ratio"] / want - 1.0))
        ratio = worst["flops_counted_ratio"] * 6
        out.append(_verdict(target, f"{ratio:.3f}NVH ({worst['case']})", abs(ratio / (6 * want) - 1) <= FLOP_TOLERANCE))
    pairs = [(f, lean_r) for f in fast for lean_r in lean if (f["case"], f["run_id"]) == (lean_r["case"],
                                                                                           lean_r["run_id"])]
    target = "CPU: fast fwd+bwd clearly below lean's (median <= 0.9x and under lean's p20, every shape)"
    if not pairs:
        out.append(_verdict(target, "", None))
    else:
        f, lean_r = max(pairs, key=lambda p: p[0]["ms_median"] / p[1]["ms_median"])
        ratio = f["ms_median"] / lean_r["ms_median"]
        clear = all(a["ms_median"] <= 0.9 * b["ms_median"] and a["ms_median"] < b["ms_p20"] for a, b in pairs)
        out.append(_verdict(target, f"worst {ratio:.2f}x ({f['ms_median']:.0f} vs {lean_r['ms_median']:.0f} ms, "
                            f"{f['case']})", clear))
    return out


def verdicts(rows) -> list[dict]:
    """Every target with its measured value: {"target", "value", "verdict"} (PASS / FAIL / not measured)."""
    return gpu_verdicts(rows) + cpu_verdicts(rows)


def format_verdicts(rows, which: str = "all") -> str:
    chosen = {"gpu": gpu_verdicts, "cpu": cpu_verdicts, "all": verdicts}[which](rows)
    lines = ["| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['verdict']} |" for t in chosen]
    return "\n".join(lines)
