"""Smoke test of the end-to-end benchmark's CPU mode (tiny shapes): it runs, records, and both paths agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    if not (ROOT / "bench" / "common.py").is_file():
        pytest.skip("bench/common.py is not present")
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_mode_records_both_paths_with_equal_losses(bench, tmp_path):
    from bench.common import read_jsonl

    assert bench.main(["--cpu", "--modes", "sft,joint_frozen", "--seq", "32", "--steps", "1", "--warmup", "0",
                       "--out", str(tmp_path)]) == 0
    rows = read_jsonl(tmp_path / "e2e.jsonl")
    assert {(r["mode"], r["path"]) for r in rows} == {(m, p) for m in ("sft", "joint_frozen")
                                                      for p in ("fused", "reference")}
    for r in rows:
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["git_commit"] is not None
        assert r["mfu"] is None and r["peak_mem_gib"] is None  # never estimated on the CPU
    for mode in ("sft", "joint_frozen"):
        fused, ref = (next(r for r in rows if r["mode"] == mode and r["path"] == p) for p in ("fused", "reference"))
        assert fused["first_loss"] == pytest.approx(ref["first_loss"], rel=1e-5)
    assert (tmp_path / "e2e.png").stat().st_size > 0
    summary = next(tmp_path.glob("e2e_summary_*.md")).read_text()
    assert "| tiny | sft | 32 |" in summary and "| tiny | joint_frozen | 32 |" in summary


def test_qwen3_shapes_give_the_published_parameter_counts(bench):
    import torch
    from transformers import AutoModelForCausalLM

    expected = {"0.6b": 0.596, "1.7b": 1.721, "4b": 4.022, "8b": 8.191}  # reference/paper.md section 4.1
    for name, billions in expected.items():
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(bench.qwen3_config(name, bench.QWEN3_VOCAB, "sdpa"))
        n = sum(p.numel() for p in m.parameters()) / 1e9
        assert n == pytest.approx(billions, abs=0.002), name
