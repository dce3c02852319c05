#!/usr/bin/env python
"""Compile the wdl_kernels Triton kernels for Hopper (sm_90a) without a GPU and report their resources.

For each kernel x dtype x head configuration it prints registers per thread, spill bytes, shared memory,
and whether the SASS uses warpgroup MMA (HGMMA) for the tile GEMMs. Exit status 1 if any compiled variant
spills or (for bf16/fp16) lacks HGMMA. Says nothing about speed; it catches compile errors, spills and wrong
instruction selection before a GPU run.

    python scripts/check_sm90.py [--json OUT.json]

It checks the Triton installed here; the GPU image may carry another (3.6 where this was written). To check
against that one without a GPU: `pip install --no-deps --target /tmp/t36 triton==3.6.0` and run this script
with `PYTHONPATH=/tmp/t36` (that is how the fp32 tile, K >= 16 before Triton 3.7, was found).
tests/kernels/test_sm90_compile.py runs it in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import replace

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from wdl_kernels.triton_impl import TritonBackend
from wdl_kernels.triton_kernels import mixed_grad_logits_kernel, mixed_lse_forward_kernel, row_dots_kernel

_TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _signature(kernel, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_desc"):
            rows = constexprs["BLOCK_M"] if name in ("hs_desc", "hw_desc") else constexprs["BLOCK_N"]
            sig[name] = f"tensordesc<{dtype}[{rows},{constexprs['BLOCK_K']}]>"
        elif name.endswith("_ptr"):
            if name == "labels_ptr":
                sig[name] = "*i64"
            elif name in ("part_ptr", "lse_ptr", "grow_ptr", "colsum_ptr", "zy_ptr", "sumz_ptr"):
                sig[name] = "*fp32"
            else:
                sig[name] = f"*{dtype}"
        elif name in ("ratio", "scale", "coef"):
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _variants():
    for torch_dtype in (torch.bfloat16, torch.float16, torch.float32):
        cfg = TritonBackend()._for_dtype(torch_dtype)
        dtype = _TRITON_DTYPE[torch_dtype]
        common = dict(DOT_PRECISION="ieee" if torch_dtype == torch.float32 else "tf32",
                      BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        for use_weak in (False, True):
            heads = dict(USE_STRONG=True, USE_WEAK=use_weak)
            yield ("forward", dtype, use_weak, mixed_lse_forward_kernel, {**common, **heads, "WITH_ENTROPY": True}, cfg)
            yield ("grad_logits", dtype, use_weak, mixed_grad_logits_kernel,
                   {**common, **heads, "GROUP_M": cfg.group_m},
                   cfg)
        yield ("row_dots", dtype, False, row_dots_kernel,
               {"WITH_SUM": True, "BLOCK_M": cfg.rowdot_block_m, "BLOCK_K": cfg.rowdot_block_k},
               replace(cfg, num_warps=4, num_stages=1))


def _ptxas_report(ptx: str) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
        path = f.name
    try:
        # Triton ships an older ptxas and a newer one (for Blackwell); use the first that takes this PTX version.
        for exe in ("ptxas", "ptxas-blackwell"):
            res = subprocess.run([os.path.join(_BIN, exe), "-v", "--gpu-name=sm_90a", path, "-o", os.devnull],
                                 capture_output=True, text=True)
            if res.returncode == 0:
                break
        else:
            raise RuntimeError(f"no bundled ptxas accepted the PTX:\n{res.stderr}")
    finally:
        os.unlink(path)
    text = res.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill_st = re.search(r"(\d+) bytes spill stores", text)
    spill_ld = re.search(r"(\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_store_bytes": int(spill_st.group(1)) if spill_st else 0,
        "spill_load_bytes": int(spill_ld.group(1)) if spill_ld else 0,
    }


def _sass_has_hgmma(cubin: bytes) -> bool:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([os.path.join(_BIN, "nvdisasm"), "-c", path], capture_output=True, text=True, check=True)
    finally:
        os.unlink(path)
    return "HGMMA" in res.stdout


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the report rows to this file")
    args = ap.parse_args(argv)
    target = GPUTarget("cuda", 90, 32)
    rows, ok = [], True
    for name, dtype, use_weak, kernel, constexprs, cfg in _variants():
        src = ASTSource(fn=kernel, signature=_signature(kernel, dtype, constexprs), constexprs=constexprs)
        compiled = triton.compile(src, target=target,
                                  options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        rep = _ptxas_report(compiled.asm["ptx"])
        rep.update(kernel=name, dtype=dtype, heads=2 if use_weak else 1, shared_bytes=compiled.metadata.shared,
                   num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                   tile=(f"{cfg.rowdot_block_m}x{cfg.rowdot_block_k}" if name == "row_dots"
                         else f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k}"),
                   hgmma=_sass_has_hgmma(compiled.asm["cubin"]))
        bad = rep["spill_store_bytes"] > 0 or (name != "row_dots" and dtype != "fp32" and not rep["hgmma"])
        ok &= not bad
        rows.append(rep)
        print(f"{name:12s} {dtype:5s} heads={rep['heads']} tile={rep['tile']} warps={cfg.num_warps} "
              f"stages={cfg.num_stages} regs={rep['registers']} spill={rep['spill_store_bytes']}/"
              f"{rep['spill_load_bytes']}B smem={rep['shared_bytes']}B hgmma={rep['hgmma']}"
              f"{'  <-- PROBLEM' if bad else ''}")
    print(f"triton {triton.__version__}, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
