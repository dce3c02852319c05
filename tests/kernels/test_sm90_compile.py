"""Every Triton kernel variant compiles for Hopper (sm_90a) on this machine, without spills, with HGMMA tile
GEMMs for bf16/fp16 (scripts/check_sm90.py). Needs no GPU: Triton's own ptxas/nvdisasm do the work, so a
kernel change that would only fail on the GPU (a compile error, a spill, a lost warpgroup MMA) fails here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_sm90.py"
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


@pytest.mark.skipif(not (BIN / "ptxas").exists(), reason="this Triton build ships no NVIDIA ptxas")
def test_all_kernels_compile_for_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # a real compile, not the interpreter
    out = tmp_path / "sm90.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    # per dtype: forward (lean+stats, fast, options) x (1, 2 heads), grad (plain x 2 heads, options), fast_grad x 2
    assert len(rows) == 3 * (6 + 3 + 2)
    assert all(r["spill_store_bytes"] == 0 and r["registers"] <= 255 for r in rows)
    assert all(r["hgmma"] for r in rows if r["kernel"] != "fast_grad" and r["dtype"] != "fp32")
    # the plain lean forward keeps 2 programs per SM: 128 registers x 256 threads, 98 KB shared memory each
    lean = [r for r in rows if r["kernel"] == "forward" and r["flavour"] == "lean+stats" and r["dtype"] != "fp32"]
    assert lean and all(r["registers"] <= 128 and r["shared_bytes"] <= 114 * 1024 for r in lean)
