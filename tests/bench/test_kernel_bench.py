"""bench_kernel.py, kernel_cases.py, kernel_impls.py: FLOP counts, cases, baseline adapters, the correctness
guard, and a CPU-mode run end to end (in process, tiny shapes)."""

from __future__ import annotations

import argparse

import pytest
import torch

from bench import bench_kernel as bk
from bench.common import read_jsonl
from bench.kernel_cases import Case, gemm_flops, kernel_flops, make_inputs, refresh_inputs
from bench.kernel_impls import (
    BASELINES,
    CompileChunked,
    CompileChunkedGradInForward,
    Eager,
    Impl,
    Ours,
    concat_heads,
)

CPU = torch.device("cpu")


def test_flop_counts():
    v = 151936
    assert kernel_flops(16384, v, 2560 + 2560, "fwdbwd") == 6 * 16384 * v * 5120
    assert kernel_flops(16384, v, 2560, "fwd") == 2 * 16384 * v * 2560
    assert kernel_flops(16384, v, 2560, "score") == kernel_flops(16384, v, 2560, "fwd")
    assert kernel_flops(8, 10, 3, "fwdbwd") == 3 * kernel_flops(8, 10, 3, "fwd") == 1440
    assert gemm_flops(16384, 5120, v) == kernel_flops(16384, v, 5120, "fwd")  # the roofline GEMM = the forward
    with pytest.raises(ValueError, match="mode"):
        kernel_flops(1, 1, 1, "backward")
    two = Case(n=16384, vocab=v, hs=2560, hw=2560, mode="fwdbwd")
    assert two.heads == 2 and two.sum_hidden == 5120 and two.flops == 6 * 16384 * v * 5120
    one = Case(n=16384, vocab=v, hs=2560, hw=0, mode="score")
    assert one.heads == 1 and one.flops == 2 * 16384 * v * 2560
    assert two.label() == "fwdbwd 2x2560 N=16384 V=151936 bf16" and one.label().startswith("score 1x2560")


@pytest.mark.parametrize("bad", [dict(mode="bwd"), dict(dtype="int8"), dict(n=0), dict(hw=-1), dict(lam=1.5),
                                 dict(ignore_frac=1.0)])
def test_case_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        Case(**{**dict(n=4, vocab=10, hs=8, hw=0, mode="fwd"), **bad})


def test_inputs_are_random_and_refresh_keeps_ignored_rows():
    case = Case(n=64, vocab=50, hs=8, hw=4, mode="fwdbwd", dtype="fp32", ignore_frac=0.5)
    inp = make_inputs(case, CPU, seed=0, requires_grad=True)
    assert [t.shape for t in inp.leaves()] == [(64, 8), (50, 8), (64, 4), (50, 4)]
    assert all(t.requires_grad and t.abs().min() > 0 for t in inp.leaves())  # never zeros
    ignored = inp.labels == -100
    assert 0 < int(ignored.sum()) < 64 and int(inp.labels[~ignored].max()) < 50
    before = [t.detach().clone() for t in inp.leaves()]
    refresh_inputs(inp, torch.Generator().manual_seed(1))
    assert all(not torch.equal(a, b) for a, b in zip(before, inp.leaves(), strict=True))
    assert torch.equal(inp.labels == -100, ignored)
    assert inp.weight.std().item() == pytest.approx(8 ** -0.5, rel=0.2)


def test_concatenation_gives_the_mixed_logits():
    case = Case(n=6, vocab=11, hs=5, hw=3, mode="fwd", dtype="fp32", lam=0.3)
    inp = make_inputs(case, CPU, seed=2, requires_grad=False)
    h, w = concat_heads(case, inp)
    want = (0.3 * inp.hidden.double() @ inp.weight.double().T
            + 0.7 * inp.weak_hidden.double() @ inp.weak_weight.double().T)
    torch.testing.assert_close(h.double() @ w.double().T, want, rtol=1e-6, atol=1e-6)


def _reference(checker, case):
    return bk.LazyReference(checker, case)


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd", "score"])
@pytest.mark.parametrize("hw", [0, 6])
def test_adapters_pass_the_correctness_check(mode, hw):
    """Every torch-only implementation computes the same function as the float64 reference (CPU, fp32);
    the compile baselines are checked without torch.compile (same code, compiled on the GPU)."""
    case = Case(n=40, vocab=37, hs=8, hw=hw, mode=mode, dtype="fp32", lam=0.3)
    checker = bk.Checker(CPU, check_n=24, seed=0)
    ref = _reference(checker, case)
    impls = [Ours("torch"), Eager(), CompileChunked(n_chunks=3, use_compile=False),
             CompileChunkedGradInForward(n_chunks=3, use_compile=False)]
    for impl in impls:
        if impl.unsupported(case):
            continue
        res = checker.check(impl, case, ref)
        assert res["check_ok"], (impl.name, res)
        assert res["check_n"] == 24
        errs = [res[f"check_err_{k}"] for k in ("loss", "grad", "entropy", "nll")]
        assert (errs[1] is not None) == (mode == "fwdbwd") and (errs[2] is not None) == (mode == "score")


class _WrongGradient(Eager):
    """Right loss value, gradients 10% too large: only the gradient check can catch it."""

    name, kind = "ours_wrong", "ours"

    def loss(self, case, inp):
        loss = super().loss(case, inp)
        return loss.detach() + 1.1 * (loss - loss.detach())


class _WrongLoss(Eager):
    name, kind = "ours_wrong", "ours"

    def loss(self, case, inp):
        return super().loss(case, inp) * 1.01


def _args(tmp_path, **kw):
    base = dict(warmup=1, reps=2, min_reps=1, rep_budget_s=1.0, check_n=16, seed=0, label="test",
                time_budget=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("wrong,mode", [(_WrongGradient, "fwdbwd"), (_WrongLoss, "fwd")])
def test_a_wrong_kernel_is_refused_and_not_timed(tmp_path, wrong, mode):
    from bench.common import ResultsWriter, env_info

    case = Case(n=32, vocab=29, hs=8, hw=8, mode=mode, dtype="fp32")
    runner = bk.Runner(_args(tmp_path), CPU, env_info(CPU), ResultsWriter(tmp_path, bk.COLUMNS), [wrong(), Eager()])
    rows = {r["impl"]: r for r in runner.run_case(case)}
    bad = rows["ours_wrong"]
    assert bad["status"] == "wrong" and bad["check_ok"] is False and bad.get("ms_median") is None
    assert all(bad.get(f"speedup_vs_{b}") is None for b in BASELINES)
    assert rows["eager"]["status"] == "ok" and rows["eager"]["check_ok"] is True
    assert runner.wrong == [f"{case.label()} ours_wrong"]


def test_oom_and_crashes_are_results_and_the_run_goes_on(tmp_path):
    from bench.common import ResultsWriter, env_info

    class OOM(Eager):
        name = "liger"

        def step(self, case, inp):
            def run():
                if torch.is_grad_enabled() and inp.hidden.shape[0] > 16:  # passes the small check, fails timing
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 ...")
                return super(OOM, self).step(case, inp)()
            return run

    class Crash(Eager):
        name = "cce"

        def step(self, case, inp):
            def run():
                if inp.hidden.shape[0] > 16:
                    raise RuntimeError("illegal memory access")
                return super(Crash, self).step(case, inp)()
            return run

    case = Case(n=32, vocab=29, hs=8, hw=0, mode="fwdbwd", dtype="fp32")
    runner = bk.Runner(_args(tmp_path), CPU, env_info(CPU), ResultsWriter(tmp_path, bk.COLUMNS),
                       [Ours("torch"), OOM(), Crash(), Eager()])
    rows = {r["impl"]: r for r in runner.run_case(case)}
    oom, crash = rows["liger"], rows["cce"]
    inputs = (32 * 8 + 29 * 8) * 4 + 32 * 8
    assert oom["status"] == "OOM" and oom["mem_needed_bytes_min"] == inputs + (2 << 30) and "2.0 GiB" in oom["note"]
    assert crash["status"] == "error" and "illegal memory access" in crash["note"]
    assert rows["eager"]["status"] == rows["ours_torch"]["status"] == "ok"
    assert rows["ours_torch"]["speedup_vs_eager"] and rows["ours_torch"].get("speedup_vs_liger") is None


def test_an_unavailable_baseline_is_reported_not_raised(tmp_path):
    from bench.common import ResultsWriter, env_info

    class Missing(Impl):
        name = "cce"

        def unavailable(self, device):
            return "missing: cut-cross-entropy is not installed"

    case = Case(n=16, vocab=20, hs=8, hw=0, mode="fwd", dtype="fp32")
    runner = bk.Runner(_args(tmp_path), CPU, env_info(CPU), ResultsWriter(tmp_path, bk.COLUMNS), [Missing()])
    (gemm, row) = runner.run_case(case)
    assert gemm["impl"] == "torch_mm" and gemm["status"] == "ok" and gemm["pct_gemm"] == 100.0
    assert row["status"] == "missing" and "not installed" in row["note"]


def test_presets_cover_the_issue_shapes():
    args = bk.parse_args(["--cpu"])
    for cpu in (False, True):
        args.cpu = cpu
        target = bk.preset_plan("target", args)
        seen = dict(target)
        for preset in ("sweep-fwdbwd", "sweep-score", "sweep"):
            plan = bk.preset_plan(preset, args)
            assert plan and not ({c for c, _ in plan} & {c for c, _ in target}), preset
            seen.update(plan)
        assert all(set(names) <= set(bk.ALL) and {"ours_triton", "ours_torch" if cpu else "ours_triton"} <= set(names)
                   for names in seen.values())
        if not cpu:
            (first, names), (second, names2) = target[:2]
            assert (first.mode, first.heads, first.hs, first.n, first.vocab, first.dtype) == (
                "fwdbwd", 2, 2560, 16384, 151936, "bf16")
            assert set(names) == set(bk.ALL)  # every baseline on the headline case
            assert (second.mode, second.heads) == ("fwdbwd", 1) and {"cce", "cce_nofilter"} <= set(names2)
            assert any(c.mode == "score" and c.heads == 1 and c.hs == 2560 and c.n == 16384 for c, _ in target)
            assert {c.hs for c in seen} == set(bk.QWEN3_HIDDEN) and {c.n for c in seen} == set(bk.TOKENS)
            assert {c.heads for c in seen if c.mode == "fwdbwd"} == {1, 2}
        else:
            assert all(c.dtype == "fp32" and c.vocab == bk.CPU_VOCAB for c in seen)
    with pytest.raises(SystemExit):
        bk.parse_args(["--cpu", "--modes", "backward"])


def test_command_line_lists_replace_the_presets_choice():
    args = bk.parse_args(["--cpu"])
    plan = bk.preset_plan("target", args)
    only = bk.resolve_names(plan, ["torch"], ["none"])
    assert all(names == ("ours_torch",) for _, names in only)
    every = bk.resolve_names(plan, None, ["all"])
    assert all(set(names) - {"ours_triton", "ours_torch"} == set(BASELINES) for _, names in every)
    kept = bk.resolve_names(plan, None, None)
    assert kept == plan


def test_skip_done_resumes_where_an_earlier_call_stopped(tmp_path, restore_threads):
    common = ["--cpu", "--hidden", "16", "--tokens", "32", "--heads", "1", "--modes", "fwd,score", "--impls", "torch",
              "--reps", "1", "--min-reps", "1", "--warmup", "1", "--no-table"]
    first = tmp_path / "first"
    assert bk.main(common + ["--out", str(first), "--modes", "fwd"]) == 0
    second = tmp_path / "second"
    assert bk.main(common + ["--out", str(second), "--skip-done", str(first / "results.jsonl")]) == 0
    rows = read_jsonl(second / "results.jsonl")
    assert {(r["mode"], r["impl"]) for r in rows} == {("score", "ours_torch"), ("score", "eager")}
    assert all(r["gemm_tflops"] for r in rows)  # the GEMM rate measured in the first call is reused


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()  # the CPU mode sets 1 thread for its process
    yield
    torch.set_num_threads(n)


def test_cpu_mode_end_to_end(tmp_path, capsys, restore_threads):
    """The CPU mode as a user runs it: every row in the one schema, ours checked and timed, speed-ups filled,
    baselines that cannot run here reported, the table printed."""
    out = tmp_path / "bench"
    common = ["--cpu", "--out", str(out), "--reps", "2", "--min-reps", "1", "--warmup", "1", "--check-n", "16"]
    rc = bk.main(common + ["--hidden", "16", "--tokens", "32", "--heads", "2,1", "--modes", "fwd,fwdbwd,score",
                           "--impls", "torch", "--baselines", "eager,compile_chunked_gif,liger,cce"])
    assert rc == 0
    # The Triton kernels through the interpreter: one small case.
    assert bk.main(common + ["--hidden", "16", "--tokens", "32", "--heads", "2", "--modes", "fwdbwd",
                             "--impls", "triton", "--baselines", "none", "--no-table"]) == 0
    assert "ours_torch" in capsys.readouterr().out
    rows = read_jsonl(out / "results.jsonl")
    assert all(list(r) == list(bk.COLUMNS) for r in rows)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == ",".join(bk.COLUMNS)
    assert len((out / "results.csv").read_text().splitlines()) == len(rows) + 1
    by = {(r["case"], r["impl"]): r for r in rows}
    for mode in ("fwd", "fwdbwd", "score"):
        for heads in ("2x16", "1x16"):
            case = f"{mode} {heads} N=32 V=500 fp32"
            ours, eager = by[(case, "ours_torch")], by[(case, "eager")]
            assert ours["status"] == "ok" and ours["check_ok"] is True, ours
            assert ours["device_type"] == "cpu" and ours["label"].startswith("CPU")
            assert ours["ms_p20"] <= ours["ms_median"] <= ours["ms_p80"]
            assert ours["tflops"] == pytest.approx(ours["flops"] / (ours["ms_median"] * 1e-3) / 1e12)
            assert ours["flops"] == kernel_flops(32, 500, 32 if heads == "2x16" else 16, mode)
            assert ours["speedup_vs_eager"] == pytest.approx(eager["ms_median"] / ours["ms_median"])
            assert ours["pct_gemm"] == pytest.approx(100 * ours["tflops"] / ours["gemm_tflops"])
            assert by[(case, "cce")]["status"] in ("missing", "unsupported")
            gif = by[(case, "compile_chunked_gif")]
            assert gif["status"] == ("ok" if mode == "fwdbwd" else "unsupported")
    triton = by[("fwdbwd 2x16 N=32 V=500 fp32", "ours_triton")]
    assert triton["status"] == "ok" and triton["check_ok"] is True and triton["check_err_grad"] < 1e-3
    assert by[("score 1x16 N=32 V=500 fp32", "liger")]["status"] in ("missing", "unsupported")
    gemm = [r for r in rows if r["mode"] == "gemm"]
    assert {(r["n"], r["hs"] + r["hw"]) for r in gemm} == {(32, 32), (32, 16)}


def test_a_spent_time_budget_records_skipped_cases(tmp_path, restore_threads):
    out = tmp_path / "b"
    assert bk.main(["--cpu", "--preset", "target", "--out", str(out), "--time-budget", "0", "--no-table"]) == 0
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == len(bk.preset_plan("target", bk.parse_args(["--cpu"])))
    assert all(r["status"] == "skipped" and r["impl"] == "all" and r["ms_median"] is None for r in rows)
