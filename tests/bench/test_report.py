"""bench/targets.py and bench/plot.py: target verdicts, tables and the PNG, from synthetic (test-only) rows."""

from __future__ import annotations

import json

import pytest

from bench import plot, targets
from bench.harness import COLUMNS

V, H = 151936, 2560


def _row(impl, kind, task, n, hw=H, ms=None, status="ok", stage="two-head", device="cuda", **kw):
    """A row in the harness's schema. Numbers here are made up for the logic under test, not measurements."""
    flops = (6 if task == "fwdbwd" else 2) * n * V * (H + hw)
    r = dict.fromkeys(COLUMNS)
    ignore = kw.pop("ignore_frac", 0.0)
    r.update(device_type=device, device_name="test-device", label="synthetic test rows", run_id="r1", task=task,
             stage=stage, case=f"{task} {'2x' if hw else '1x'}{H} N={n} V={V} bf16" + (f" ignore={ignore:g}"
                                                                                         if ignore else ""),
             heads=2 if hw else 1, n=n, vocab=V, hs=H, hw=hw, dtype="bf16", impl=impl, kind=kind, status=status,
             flops=flops, check_ok=True, rated=True, ignore_frac=ignore,
             kernel_mode=impl.rsplit("_", 1)[-1] if kind == "ours" else None)
    if ms is not None:
        r.update(ms_median=ms, ms_p20=ms * 0.99, ms_p80=ms * 1.01, tflops=flops / (ms * 1e-3) / 1e12)
    r.update(kw)
    return r


def _passing_rows():
    rows = []
    for n, pct in ((4096, 80.0), (8192, 90.0), (16384, 88.0)):
        rows += [_row("ours_triton_fast", "ours", "fwdbwd", n, ms=10.0, pct_gemm=pct),
                 _row("ours_triton_lean", "ours", "fwdbwd", n, ms=14.0, pct_gemm=62.0),
                 _row("compile_chunked", "baseline", "fwdbwd", n, ms=12.0),
                 _row("compile_chunked_gif", "baseline", "fwdbwd", n, ms=11.5),
                 _row("liger_fp32acc", "baseline", "fwdbwd", n, ms=25.0),
                 _row("liger", "baseline", "fwdbwd", n, ms=21.0)]
    rows += [_row("ours_triton_lean", "ours", "fwdbwd", 16384, ms=15.0, pct_gemm=61.0, mem_extra_bytes=450e6,
                  ignore_frac=0.1, stage="breakdown"),
             _row("ours_triton_lean", "ours", "fwdbwd", 16384, hw=0, ms=10.0, stage="one-head"),
             _row("cce_nofilter", "baseline", "fwdbwd", 16384, hw=0, ms=14.0, stage="one-head"),
             _row("cce", "baseline", "fwdbwd", 16384, hw=0, ms=5.0, stage="one-head", rated=False, check_ok=False),
             _row("ours_triton_lean", "ours", "score", 16384, ms=5.0, pct_gemm=80.0, stage="breakdown")]
    return rows


def _verdicts(rows):
    return {t["target"]: t["verdict"] for t in targets.gpu_verdicts(rows)}


def test_gpu_verdicts_follow_the_measured_rows():
    got = _verdicts(_passing_rows())
    assert set(got.values()) == {"PASS"}, got
    assert len(got) == 3 + 2 * 3 + 1 + 3
    rows = _passing_rows()
    rows[0]["pct_gemm"] = 74.0  # fast at N=4096 under 75%
    rows[5]["ms_median"] = 19.0  # default Liger at N=4096 less than 2x slower than fast
    rows[-5]["mem_extra_bytes"] = 600e6  # lean over 512 MB with ignored labels
    got = _verdicts(rows)
    assert got["fast, N=4096: >= 75% of cuBLAS on 6NVH"] == "FAIL"
    assert got["fast, N=4096: >= 2x Liger (faster accumulation setting)"] == "FAIL"
    assert got["lean, N=16384, 10% ignored: >= 60% of cuBLAS on 6NVH at <= 512 MB extra"] == "FAIL"
    assert got["fast, N=8192: >= 85% of cuBLAS on 6NVH"] == "PASS"


def test_filtered_cce_is_never_rated_and_other_stages_do_not_mix():
    rows = [r for r in _passing_rows() if r["impl"] != "cce_nofilter"]
    assert _verdicts(rows)["lean, one head, N=16384: >= 1.3x cut-cross-entropy (filter_eps=None)"] == "not measured"
    # a baseline measured in another stage is not compared with ours
    rows = [dict(r, stage="elsewhere") if r["impl"] == "liger_fp32acc" else r for r in _passing_rows()]
    assert _verdicts(rows)["fast, N=16384: >= 1.1x Liger (fp32 accumulation)"] == "not measured"


def test_nothing_is_judged_without_cuda_rows():
    cpu = [dict(r, device_type="cpu") for r in _passing_rows()]
    assert set(_verdicts(cpu).values()) == {"not measured"}
    assert set(_verdicts([]).values()) == {"not measured"}
    failed = [dict(r, status="OOM") if r["impl"] == "ours_triton_fast" else r for r in _passing_rows()]
    assert _verdicts(failed)["fast, N=16384: >= 85% of cuBLAS on 6NVH"] == "not measured"


def test_cpu_verdicts():
    def cpu(impl, ratio, ms, case="fwdbwd 2x512 N=2048 V=8000 fp32"):
        return dict(_row(impl, "ours", "fwdbwd", 2048, ms=ms, device="cpu", stage="cpu-modes"), case=case,
                    flops_counted_ratio=ratio, flops_counted=1)

    rows = [cpu("ours_torch_fast", 1.002, 600.0), cpu("ours_torch_lean", 4 / 3, 900.0)]
    got = {t["target"]: t["verdict"] for t in targets.cpu_verdicts(rows)}
    assert set(got.values()) == {"PASS"}, got
    rows[0].update(ms_median=850.0)
    got = {t["target"]: t["verdict"] for t in targets.cpu_verdicts(rows)}
    assert got["CPU: fast fwd+bwd clearly below lean's (median <= 0.9x and under lean's p20, every shape)"] == "FAIL"
    smoke = [dict(r, stage="smoke") for r in rows]  # tiny smoke shapes are not the GEMM-bound benchmark
    assert {t["verdict"] for t in targets.cpu_verdicts(smoke)} == {"not measured"}


def test_table_marks_information_rows_and_quotes_both_modes():
    rows = _passing_rows() + [_row("cublas_gemm", "roofline", "gemm", 16384, ms=20.0, stage="one-head", hw=0)]
    text = plot.format_table(rows)
    cce = next(line for line in text.splitlines() if " cce " in line)
    assert "ok! (info)" in cce
    liger = next(line for line in text.splitlines() if " liger_fp32acc " in line and "N=16384" in line)
    assert "2.50x" in liger and "1.79x" in liger  # fast x and lean x
    assert text.splitlines()[0].split()[:4] == ["stage", "case", "impl", "status"]
    md = plot.format_table(rows, markdown=True)
    assert md.startswith("| stage | case | impl |") and md.count("\n") == len(text.splitlines())


def test_load_rows_keeps_the_last_row_per_stage_case_and_impl(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first = _row("eager", "baseline", "fwd", 4096, ms=5.0)
    other_stage = dict(first, stage="breakdown")
    a.write_text(json.dumps(first) + "\n" + json.dumps(other_stage) + "\n")
    b.write_text(json.dumps(dict(first, ms_median=4.0)) + "\n")
    rows = plot.load_rows([a, b])
    assert [(r["stage"], r["ms_median"]) for r in rows] == [("two-head", 4.0), ("breakdown", 5.0)]


def test_png_summary_and_cli(tmp_path, capsys):
    png, md = tmp_path / "p" / "kernel_bench.png", tmp_path / "summary.md"
    plot.plot(_passing_rows(), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    plot.write_summary(_passing_rows(), md)
    text = md.read_text()
    assert "## Targets" in text and "test-device" in text and "| PASS |" in text
    plot.plot([], tmp_path / "empty.png")  # nothing measured: still a valid figure
    res = tmp_path / "results.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in _passing_rows()))
    assert plot.main([str(res), "--out", str(tmp_path / "o"), "--no-png"]) == 0
    assert "ours_triton_fast" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "nope.jsonl")])
