"""Smoke test of the end-to-end benchmark's CPU mode (tiny shapes): it runs, records, and both paths agree."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    if not (ROOT / "bench" / "bench_e2e.py").is_file():
        pytest.skip("bench/bench_e2e.py is not present")
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("bench_e2e", ROOT / "bench" / "bench_e2e.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_mode_records_both_paths_with_equal_losses(bench, tmp_path):
    from wdl.io import read_jsonl

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

    expected = {"0.6b": 0.596, "1.7b": 1.721, "4b": 4.022, "8b": 8.191}  # the Qwen3 model cards (billions)
    for name, billions in expected.items():
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(bench.qwen3_config(name, bench.QWEN3_VOCAB, "sdpa"))
        n = sum(p.numel() for p in m.parameters()) / 1e9
        assert n == pytest.approx(billions, abs=0.002), name


def _row(bench, **kw):
    r = dict.fromkeys(bench.COLUMNS)
    r.update(device_type="cuda", status="ok", model="1.7b", mode="joint", micro_batch=1,
             activation_checkpointing=True, offload_optimizer=False, fsdp_cpu_offload=False)
    r.update(kw)
    return r


def test_target_verdicts_come_from_measured_gpu_rows_only(bench):
    # synthetic rows (test-only values) for each target, once passing and once failing
    passing = [_row(bench, kind="max_seq", path="fused", seq_len=65536),
               _row(bench, kind="max_seq", path="reference", seq_len=8192),
               _row(bench, kind="throughput", path="fused", seq_len=8192, tokens_per_s=2600.0, mfu=0.45),
               _row(bench, kind="throughput", path="reference", seq_len=8192, tokens_per_s=2000.0, mfu=0.3),
               _row(bench, kind="throughput", path="fused", seq_len=4096, tokens_per_s=9000.0, mfu=0.41),
               _row(bench, kind="throughput", path="fused", model="4b", mode="joint_frozen", seq_len=8192,
                    backend="fsdp2", fsdp_cpu_offload=True, tokens_per_s=500.0)]
    text = bench.format_targets(passing)
    assert text.count("| PASS |") == 4, text
    assert "65536 vs 8192" in text and "2600 vs 2000 tok/s at 8192" in text and "45.0% at 8192" in text

    failing = [dict(r) for r in passing]
    failing[0]["seq_len"] = 16384  # 2x, not 4x
    failing[2].update(tokens_per_s=2100.0, mfu=0.2)
    failing[4]["mfu"] = 0.3
    failing[5].update(status="oom", tokens_per_s=None)
    text = bench.format_targets(failing)
    assert text.count("| FAIL |") == 4, text
    assert "| OOM |" in text

    cpu = [dict(r, device_type="cpu") for r in passing]
    assert bench.format_targets(cpu).count("| not measured |") == 4


def test_report_rebuilds_the_summary_from_recorded_rows(bench, tmp_path, capsys):
    assert bench.main(["--cpu", "--modes", "sft", "--paths", "fused", "--seq", "32", "--steps", "1", "--warmup", "0",
                       "--out", str(tmp_path), "--no-plot"]) == 0
    assert bench.main(["--report", str(tmp_path / "e2e.jsonl"), "--out", str(tmp_path)]) == 0
    assert "| tiny | sft | 32 |" in (tmp_path / "e2e_summary.md").read_text()
    assert (tmp_path / "e2e.png").stat().st_size > 0
    assert bench.main(["--report", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_materialized_reference_loss_equals_the_fused_loss(bench):
    """The benchmark's baseline (full logits, stacked, mixed, fp32 cross-entropy) plugged into JointModel gives the
    fused kernel's loss and statistics."""
    import torch
    from transformers import AutoModelForCausalLM

    from wdl.models import FusedMixedCrossEntropy, JointModel
    from wdl.tiny import tiny_qwen3_config

    vocab = 300

    def model(seed):
        torch.manual_seed(seed)
        m = AutoModelForCausalLM.from_config(tiny_qwen3_config(vocab, num_hidden_layers=2, hidden_size=64,
                                                               intermediate_size=128))
        m.config.use_cache = False
        return m

    s, w = model(1), model(2)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    labels = torch.randint(0, vocab, (2, 24), generator=g)
    labels[:, :5] = -100
    labels[1, -3:] = -100
    pos = torch.cat([torch.arange(10), torch.arange(14)]).repeat(2, 1)  # two packed sequences per row
    fused = JointModel(s, w, lam=0.5, loss=FusedMixedCrossEntropy(impl="torch"))(ids, labels, pos)
    ref = JointModel(s, w, lam=0.5, loss=bench.MaterializedMixedCrossEntropy())(ids, labels, pos)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fused.stats.margin, ref.stats.margin, rtol=1e-4, atol=1e-4)
