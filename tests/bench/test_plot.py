"""bench/plot.py: tables, the issue's target verdicts, and the PNG, from (synthetic, test-only) rows."""

from __future__ import annotations

import json

import pytest

from bench import plot
from bench.bench_kernel import COLUMNS

V, N, H = 151936, 16384, 2560


def _row(impl, kind, mode, hw, ms=None, status="ok", **kw):
    """A row in the benchmark's schema. Numbers here are made up for the logic under test, not measurements."""
    flops = (6 if mode == "fwdbwd" else 2) * N * V * (H + hw)
    r = dict.fromkeys(COLUMNS)
    r.update(device_type="cuda", device_name="test-device", label="synthetic test rows", run_id="r1", mode=mode,
             case=f"{mode} {'2x' if hw else '1x'}{H} N={N} V={V} bf16", heads=2 if hw else 1, n=N, vocab=V, hs=H,
             hw=hw, dtype="bf16", impl=impl, kind=kind, status=status, flops=flops, check_ok=True)
    if ms is not None:
        r.update(ms_median=ms, ms_p20=ms * 0.99, ms_p80=ms * 1.01, tflops=flops / (ms * 1e-3) / 1e12)
    r.update(kw)
    return r


def _rows(ours_pct=75.0, ours_extra=400e6):
    gemm_tf = 800.0
    two = _row("ours_triton", "ours", "fwdbwd", H, ms=100.0, mem_extra_bytes=ours_extra,
               speedup_vs_compile_chunked=1.5, speedup_vs_compile_chunked_gif=1.05, speedup_vs_liger=3.2,
               gemm_tflops=gemm_tf, pct_gemm=ours_pct)
    rows = [
        _row("cublas_gemm", "roofline", "gemm", H, ms=20.0),
        two,
        _row("compile_chunked", "baseline", "fwdbwd", H, ms=150.0, mem_extra_bytes=4 * ours_extra),
        _row("compile_chunked_gif", "baseline", "fwdbwd", H, ms=105.0, mem_extra_bytes=1e9),
        _row("eager", "baseline", "fwdbwd", H, status="OOM", mem_needed_bytes_min=90e9),
        _row("ours_triton", "ours", "fwdbwd", 0, ms=50.0, speedup_vs_cce=1.3, speedup_vs_cce_nofilter=2.0),
        _row("cce", "baseline", "fwdbwd", 0, ms=65.0, check_ok=False),
        _row("ours_triton", "ours", "score", 0, ms=10.0, pct_gemm=69.9, mem_extra_bytes=1e6),
        _row("liger", "baseline", "score", 0, status="unsupported"),
    ]
    rows[0]["case"] = f"gemm N={N} K={2 * H} V={V} bf16"
    return rows


def test_target_verdicts_follow_the_measured_rows():
    verdicts = {t["target"]: t["verdict"] for t in plot.target_checks(_rows())}
    get = lambda prefix: next(v for k, v in verdicts.items() if k.startswith(prefix))  # noqa: E731
    assert get("two 4B heads") == "PASS"
    assert get("two heads: >= 1.1x faster than compile_chunked_gif") == "FAIL"
    assert get("two heads: >= 1.1x faster than compile_chunked") == "PASS"
    assert get("two heads: <= 1/4 of compile_chunked's") == "PASS"
    assert get("two heads: <= 1/4 of compile_chunked_gif's") == "FAIL"
    assert get("two heads: >= 3x faster than Liger") == "PASS"
    assert get("two heads: extra memory") == "PASS"
    assert verdicts["single head: >= 1.2x faster than cce"] == "PASS"
    assert verdicts["single head: >= 1.2x faster than cce_nofilter"] == "PASS"
    assert get("forward-only scoring") == "FAIL"  # 69.9 < 70
    low = {t["target"]: t["verdict"] for t in plot.target_checks(_rows(ours_pct=50.0, ours_extra=600e6))}
    assert low[next(k for k in low if k.startswith("two 4B heads"))] == "FAIL"
    assert low[next(k for k in low if k.startswith("two heads: extra memory"))] == "FAIL"
    assert all(t["verdict"] == "not measured" for t in plot.target_checks([]))


def test_table_marks_oom_and_failed_checks_and_quotes_our_speedup():
    text = plot.format_table(_rows())
    oom = next(line for line in text.splitlines() if " eager " in line)
    assert "OOM" in oom and "83.82" in oom  # needed-at-least memory in GiB where the peak is unknown
    cce = next(line for line in text.splitlines() if " cce " in line)
    assert " ok! " in cce and "1.30x" in cce
    assert "cublas_gemm" in text and text.splitlines()[0].split()[:3] == ["case", "impl", "status"]
    md = plot.format_table(_rows(), markdown=True)
    assert md.startswith("| case | impl |") and md.count("\n") == len(text.splitlines())


def test_load_rows_keeps_the_last_row_per_case_and_impl(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first = _row("eager", "baseline", "fwd", 0, ms=5.0)
    second = dict(first, ms_median=4.0)
    a.write_text(json.dumps(first) + "\n")
    b.write_text(json.dumps(second) + "\n" + json.dumps(_row("ours_triton", "ours", "fwd", 0, ms=1.0)) + "\n")
    rows = plot.load_rows([a, b])
    assert [r["impl"] for r in rows] == ["eager", "ours_triton"] and rows[0]["ms_median"] == 4.0


def test_png_and_summary_are_written(tmp_path):
    png, md = tmp_path / "p" / "kernel_bench.png", tmp_path / "summary.md"
    plot.plot(_rows(), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    plot.write_summary(_rows(), md)
    text = md.read_text()
    assert "## Targets" in text and "test-device" in text and "| PASS |" in text
    plot.plot([], tmp_path / "empty.png")  # nothing measured: still a valid figure
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_cli_renders_a_results_file(tmp_path, capsys):
    res = tmp_path / "results.jsonl"
    res.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    assert plot.main([str(res), "--out", str(tmp_path / "o")]) == 0
    assert {p.name for p in (tmp_path / "o").iterdir()} == {"kernel_bench.png", "summary.md"}
    out = capsys.readouterr().out
    assert "ours_triton" in out and "| target (issue 2) |" in out
    with pytest.raises(SystemExit):
        plot.main([str(tmp_path / "nope.jsonl")])
