#!/usr/bin/env python
"""Time the Triton kernels' tile configurations on this GPU (forward LSE kernel and dL/dz kernel).

Run on a GPU machine; prints one row per configuration (median ms over CUDA-event timed reps, TFLOP/s on
2·N·V·(Hs+Hw) and the percentage of a cuBLAS bf16 GEMM of the same shape timed in the same run) and writes
JSON rows with --json. The library's configurations are fixed (no run-time autotuning, for determinism):
use the best row here to update TritonBackend's defaults, with the numbers in the commit message.

    python scripts/tune_triton_tiles.py --n 16384 --h 2560 --heads 2 --json $OUT/tiles.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import asdict, replace

import torch

from wdl_kernels.problem import Problem
from wdl_kernels.triton_impl import TritonBackend

CONFIGS = [  # (block_m, block_n, block_k, num_warps, num_stages)
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 256, 64, 8, 3), (64, 256, 64, 8, 3),
    (128, 128, 64, 4, 3), (128, 64, 64, 4, 4), (256, 128, 64, 8, 3),
]


def _time(fn, reps: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--v", type=int, default=151936)
    ap.add_argument("--h", type=int, default=2560)
    ap.add_argument("--heads", type=int, choices=(1, 2), default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--json", help="write rows here")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dev, dt = torch.device("cuda"), torch.bfloat16
    n, v, h = args.n, args.v, args.h
    hs = torch.randn(n, h, device=dev, dtype=dt)
    ws = torch.randn(v, h, device=dev, dtype=dt) * h ** -0.5
    hw = torch.randn(n, h, device=dev, dtype=dt) if args.heads == 2 else None
    ww = torch.randn(v, h, device=dev, dtype=dt) * h ** -0.5 if args.heads == 2 else None
    labels = torch.randint(0, v, (n,), device=dev)
    prob = Problem(hs, ws, hw, ww, labels, 0.5)
    flops = 2 * n * v * h * args.heads
    gemm_ms = _time(lambda: torch.mm(hs, ws.T), args.reps) * args.heads
    print(f"cuBLAS bf16 {n}x{h}x{v} x{args.heads}: {gemm_ms:.2f} ms ({flops / gemm_ms / 1e9:.0f} TFLOP/s)")
    base = TritonBackend.for_device(dev)
    lse = torch.zeros(n, device=dev)
    grow = torch.full((n,), 1.0 / n, device=dev)
    chunk = min(v, 8192)
    out = torch.empty(n, chunk, device=dev, dtype=dt)
    rows = []
    for bm, bn, bk, warps, stages in CONFIGS:
        be = replace(base, block_m=bm, block_n=bn, block_k=bk, num_warps=warps, num_stages=stages)
        try:
            fwd = _time(lambda be=be: be.forward_partials(prob, -100, True), args.reps)
            grad = _time(lambda be=be: be.grad_logits(prob, 0, n, 0, chunk, lse, grow, out), args.reps) * v / chunk
        except Exception as e:  # a config that does not fit this GPU (shared memory) is reported, not fatal
            print(f"{bm}x{bn}x{bk} w{warps} s{stages}: failed: {str(e).splitlines()[0]}")
            continue
        row = dict(config=asdict(be), fwd_ms=fwd, grad_logits_ms_full_vocab=grad, gemm_ms=gemm_ms,
                   fwd_pct_of_gemm=100 * gemm_ms / fwd, grad_pct_of_gemm=100 * gemm_ms / grad,
                   device=torch.cuda.get_device_name(), n=n, v=v, h=h, heads=args.heads)
        rows.append(row)
        print(f"{bm}x{bn}x{bk} w{warps} s{stages}: forward {fwd:.2f} ms ({row['fwd_pct_of_gemm']:.0f}% of cuBLAS), "
              f"dL/dz over V {grad:.2f} ms ({row['grad_pct_of_gemm']:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
