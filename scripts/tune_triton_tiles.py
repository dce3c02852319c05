#!/usr/bin/env python
"""Time the Triton backend's tile configurations on this GPU, kernel by kernel, against cuBLAS in the same run.

For each configuration (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) it times, with CUDA events (median over
--reps, fresh inputs are not needed: the kernels' work does not depend on the values):
    forward   TritonBackend.forward_partials: the lean forward (mixed logits + online softmax over V)
    fast      TritonBackend.fast_block over all rows: fast mode's logits pass that also stores the tile
              offsets and G (one [rows, V] workspace)
    grad      TritonBackend.grad_block over the whole vocabulary: lean's recompute-and-G pass
and reports each as a percentage of the cuBLAS bf16 logits GEMM of the same shape ([N, Hs+Hw] x [Hs+Hw, V]),
plus the programs per SM each compiled forward variant gets (`occupancy_report`). The library's tiles are
fixed (no autotuning: run-to-run bitwise determinism); update TritonBackend's defaults from the best row.

    python scripts/tune_triton_tiles.py --n 16384 --h 2560 --heads 2 --json $OUT/tiles.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "kernels")]

import torch  # noqa: E402

CONFIGS = [  # (block_m, block_n, block_k, num_warps, num_stages)
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (64, 256, 64, 8, 3),
    (128, 128, 64, 4, 3), (128, 64, 64, 4, 4), (256, 128, 64, 8, 3),
]


def median_ms(fn, reps: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def cublas_ms(n: int, k: int, v: int, dev: torch.device, reps: int) -> float:
    """The bf16 logits GEMM [n, k] x [k, v] into a preallocated output (the roofline)."""
    a = torch.randn(n, k, device=dev, dtype=torch.bfloat16)
    b = torch.randn(v, k, device=dev, dtype=torch.bfloat16)
    c = torch.empty(n, v, device=dev, dtype=torch.bfloat16)
    return median_ms(lambda: torch.mm(a, b.T, out=c), reps)


def problem(n: int, v: int, h: int, heads: int, dev: torch.device):
    from wdl_kernels.options import LossOptions
    from wdl_kernels.problem import Problem

    g = torch.Generator(device=dev).manual_seed(0)
    dt = torch.bfloat16

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=dev, generator=g) * scale).to(dt)

    hs, ws = randn(n, h), randn(v, h, scale=h ** -0.5)
    hw, ww = (randn(n, h), randn(v, h, scale=h ** -0.5)) if heads == 2 else (None, None)
    labels = torch.randint(0, v, (n,), device=dev, generator=g)
    return Problem(hs, ws, hw, ww, labels, None, LossOptions())


def time_config(base, prob, reps: int) -> dict:
    n, v = prob.n, prob.vocab
    part = base.forward_partials(prob, False)
    lse = part.m + torch.log(part.s)
    gcoef = torch.ones(n, device=prob.hidden.device)
    _, chunk = base.lean_chunks(prob)
    out = torch.empty(n, chunk, dtype=prob.hidden.dtype, device=prob.hidden.device)
    rows = base.fast_token_chunk(prob)
    workspace = base.new_fast_workspace(prob, rows)

    def lean_grad():
        for v0 in range(0, v, chunk):
            v1 = min(v, v0 + chunk)
            base.grad_block(prob, 0, n, v0, v1, lse, gcoef, None, out[:, : v1 - v0])

    def fast():
        for r0 in range(0, n, rows):
            base.fast_block(prob, r0, min(n, r0 + rows), False, workspace)

    return {"forward_ms": median_ms(lambda: base.forward_partials(prob, False), reps),
            "fast_ms": median_ms(fast, reps), "grad_ms": median_ms(lean_grad, reps),
            "fast_token_chunk": rows, "lean_vocab_chunk": chunk}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--v", type=int, default=151936)
    ap.add_argument("--h", type=int, default=2560)
    ap.add_argument("--heads", type=int, choices=(1, 2), default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_triton_tiles: needs a CUDA GPU (the tiles are timed, not simulated)", file=sys.stderr)
        return 2
    from wdl_kernels.triton_backend import TritonBackend, occupancy_report

    dev = torch.device("cuda")
    prob = problem(args.n, args.v, args.h, args.heads, dev)
    k = args.h * args.heads
    gemm_ms = cublas_ms(args.n, k, args.v, dev, args.reps)
    flops = 2 * args.n * args.v * k
    print(f"cuBLAS bf16 [{args.n}, {k}] x [{k}, {args.v}]: {gemm_ms:.2f} ms ({flops / gemm_ms / 1e9:.0f} TFLOP/s)")
    base = TritonBackend.for_device(dev)
    rows = []
    for bm, bn, bk, warps, stages in CONFIGS:
        be = replace(base, block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages)
        name = f"{bm}x{bn}x{bk} w{warps} s{stages}"
        try:
            t = time_config(be, prob, args.reps)
        except Exception as e:  # noqa: BLE001 - a config that does not fit this GPU (shared memory) is reported
            print(f"{name}: failed: {str(e).splitlines()[0][:200]}")
            continue
        row = dict(config=asdict(be), device=torch.cuda.get_device_name(), n=args.n, v=args.v, h=args.h,
                   heads=args.heads, gemm_ms=gemm_ms, **t,
                   **{f"{key}_pct_of_gemm": 100 * gemm_ms / t[f"{key}_ms"] for key in ("forward", "fast", "grad")})
        rows.append(row)
        print(f"{name}: forward {t['forward_ms']:.2f} ms ({row['forward_pct_of_gemm']:.0f}% of cuBLAS), fast logits "
              f"+ G {t['fast_ms']:.2f} ms ({row['fast_pct_of_gemm']:.0f}%), lean recompute + G {t['grad_ms']:.2f} ms "
              f"({row['grad_pct_of_gemm']:.0f}%)")
    print(f"programs per SM of the compiled forward variants: {occupancy_report()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "occupancy": occupancy_report()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
