#!/usr/bin/env python
"""Compile the wdl_kernels Triton kernels for Hopper (sm_90a) without a GPU and report their resources.

For each kernel x dtype x head configuration it prints registers per thread, spill bytes, shared memory,
and whether the SASS uses warpgroup MMA (HGMMA) for the tile GEMMs. Exit status 1 if any compiled variant
spills or (for bf16/fp16) lacks HGMMA. Says nothing about speed; it catches compile errors, spills and wrong
instruction selection before a GPU run.

    python scripts/check_sm90.py [--json OUT.json]

It checks the Triton installed here; the H100/H200 machines this project benchmarks on carry Triton 3.6.
To check against that one without a GPU: `pip install --no-deps --target /tmp/t36 triton==3.6.0` and run this script
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

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from triton.compiler import make_backend

from wdl_kernels.triton_backend import TritonBackend
from wdl_kernels.triton_fast_grad import fast_grad_kernel
from wdl_kernels.triton_forward import mixed_ce_forward_kernel
from wdl_kernels.triton_grad import mixed_ce_grad_kernel

_TRITON_DTYPE = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
_FP32_PTRS = ("part_ptr", "lse_ptr", "gcoef_ptr", "lcoef_ptr", "bias_ptr", "mt_ptr", "zy_ptr")
# Integer arguments that are multiples of 16 at the benchmark's shapes (N = 16384, V = 151936, H = 2560): the JIT
# specializes them (and every 16-byte aligned pointer) as divisible by 16, which changes the code and its registers.
_DIVISIBLE_INTS = ("N", "V", "HS", "HW", "R", "C", "stride_d", "stride_g", "num_m_blocks")
_FLOAT_ARGS = ("ratio", "scale", "softcap", "z_loss", "target_weight", "uniform_weight", "G_SCALE")


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
            elif name in _FP32_PTRS:
                sig[name] = "*fp32"
            elif name == "d_ptr":
                sig[name] = "*fp32" if dtype == "fp32" else "*fp16"
            else:
                sig[name] = f"*{dtype}"
        elif name in _FLOAT_ARGS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def _attrs(kernel, signature: dict, target) -> dict:
    """The JIT's runtime specialization: aligned pointers and the shape integers divisible by 16."""
    divisible = make_backend(target).parse_attr("D")
    return {(i,): divisible for i, name in enumerate(kernel.arg_names)
            if signature[name].startswith("*") or name in _DIVISIBLE_INTS}


def _variants():
    """(kernel name, dtype, heads, flavour, kernel, constexprs, num_warps, num_stages, tile, maxnreg)."""
    plain = dict(HAS_BIAS=False, SOFTCAP=False)
    options = dict(HAS_BIAS=True, SOFTCAP=True)
    for torch_dtype in (torch.bfloat16, torch.float16, torch.float32):
        cfg = TritonBackend().cfg(torch_dtype)
        dtype = _TRITON_DTYPE[torch_dtype]
        tiles = dict(DOT_PRECISION="ieee" if torch_dtype == torch.float32 else "tf32",
                     BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        tile = f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k}"
        for use_weak in (False, True):
            heads = dict(USE_STRONG=True, USE_WEAK=use_weak, GROUP_M=cfg.group_m, OFFSETS_64=False, **tiles)
            n_heads = 2 if use_weak else 1
            for flavour, extra in (("lean+stats", dict(WITH_ENTROPY=True, STORE_D=False, **plain)),
                                   ("fast", dict(WITH_ENTROPY=False, STORE_D=True, **plain)),
                                   ("options+stats", dict(WITH_ENTROPY=True, STORE_D=False, **options))):
                fcfg = TritonBackend().cfg(torch_dtype, store_d=extra["STORE_D"])
                cap = fcfg.register_cap("forward", torch_dtype, extra["HAS_BIAS"], extra["STORE_D"])
                yield ("forward", dtype, n_heads, flavour, mixed_ce_forward_kernel, {**heads, **extra},
                       fcfg.num_warps, fcfg.num_stages, tile, cap)
            grads = [("plain", dict(HAS_LSE_GRAD=False, HAS_Z_LOSS=False, **plain))]
            if use_weak:
                grads.append(("options+lse", dict(HAS_LSE_GRAD=True, HAS_Z_LOSS=True, **options)))
            for flavour, extra in grads:
                yield ("grad", dtype, n_heads, flavour, mixed_ce_grad_kernel, {**heads, **extra},
                       cfg.num_warps, cfg.num_stages, tile, cfg.register_cap("grad", torch_dtype, False, False))
        bm, bn = cfg.fast_grad_block
        for flavour, extra in (("plain", dict(SOFTCAP=False, HAS_Z_LOSS=False)),
                               ("options", dict(SOFTCAP=True, HAS_Z_LOSS=True))):
            yield ("fast_grad", dtype, 0, flavour, fast_grad_kernel,
                   {**extra, "FWD_BLOCK_N": cfg.block_n, "BLOCK_M": bm, "BLOCK_N": bn, "OFFSETS_64": False}, 4, 1,
                   f"{bm}x{bn}", None)


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
    for name, dtype, heads, flavour, kernel, constexprs, warps, stages, tile, maxnreg in _variants():
        signature = _signature(kernel, dtype, constexprs)
        src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                        attrs=_attrs(kernel, signature, target))
        options = {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})}
        compiled = triton.compile(src, target=target, options=options)
        rep = _ptxas_report(compiled.asm["ptx"])
        rep.update(kernel=name, dtype=dtype, heads=heads, flavour=flavour, shared_bytes=compiled.metadata.shared,
                   num_warps=warps, num_stages=stages, tile=tile, maxnreg=maxnreg,
                   hgmma=_sass_has_hgmma(compiled.asm["cubin"]))
        gemm = name != "fast_grad" and dtype != "fp32"
        bad = rep["spill_store_bytes"] > 0 or (gemm and not rep["hgmma"])
        ok &= not bad
        rows.append(rep)
        print(f"{name:9s} {dtype:4s} heads={heads} {flavour:13s} tile={tile} warps={warps} stages={stages} "
              f"regs={rep['registers']} spill={rep['spill_store_bytes']}/{rep['spill_load_bytes']}B "
              f"smem={rep['shared_bytes']}B hgmma={rep['hgmma']}{'  <-- PROBLEM' if bad else ''}")
    print(f"triton {triton.__version__}, torch {torch.__version__}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "rows": rows}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
