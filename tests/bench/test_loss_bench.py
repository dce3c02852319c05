"""The loss benchmark: FLOP conventions, cases and inputs, implementation adapters, the correctness guard and the
harness (in process, tiny CPU shapes), and the bench_kernel.py CLI."""

from __future__ import annotations

import pytest
import torch

from bench import bench_kernel as bk
from bench.cases import LossCase, gemm_flops, make_inputs, nominal_flops, refresh_inputs
from bench.correctness import Checker
from bench.env import env_info
from bench.harness import COLUMNS, Harness
from bench.impls import (
    BASELINES,
    CompileChunked,
    CompileChunkedGradInForward,
    CutCrossEntropy,
    Eager,
    Impl,
    Ours,
    build_impls,
    concat_heads,
)
from bench.timing import TimingConfig
from wdl.io import read_jsonl

CPU = torch.device("cpu")
FAST_TIMING = TimingConfig(warmup=1, reps=2, min_reps=1, rep_budget_s=1.0, flush_l2=False)


def test_flop_conventions():
    v = 151936
    assert nominal_flops(16384, v, 2560 + 2560, "fwdbwd") == 6 * 16384 * v * 5120
    assert nominal_flops(16384, v, 2560, "fwd") == nominal_flops(16384, v, 2560, "score") == 2 * 16384 * v * 2560
    assert gemm_flops(16384, 5120, v) == nominal_flops(16384, v, 5120, "fwd")  # the roofline GEMM = the forward
    with pytest.raises(ValueError, match="task"):
        nominal_flops(1, 1, 1, "backward")
    two = LossCase(n=16384, vocab=v, hs=2560, hw=2560, task="fwdbwd")
    assert two.heads == 2 and two.sum_hidden == 5120 and two.flops == 6 * 16384 * v * 5120
    assert two.label() == "fwdbwd 2x2560 N=16384 V=151936 bf16"
    # ignored labels make a distinct case: its rows never overwrite the fully labelled case's
    assert LossCase(n=16384, vocab=v, hs=2560, hw=2560, task="fwdbwd", ignore_frac=0.1).label() == (
        "fwdbwd 2x2560 N=16384 V=151936 bf16 ignore=0.1")


@pytest.mark.parametrize("bad", [dict(task="bwd"), dict(dtype="int8"), dict(n=0), dict(hw=-1), dict(lam=1.5),
                                 dict(ignore_frac=1.0)])
def test_case_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LossCase(**{**dict(n=4, vocab=10, hs=8, hw=0, task="fwd"), **bad})


def test_inputs_are_random_and_refresh_keeps_ignored_rows():
    case = LossCase(n=64, vocab=50, hs=8, hw=4, task="fwdbwd", dtype="fp32", ignore_frac=0.5)
    inp = make_inputs(case, CPU, seed=0, requires_grad=True)
    assert [t.shape for t in inp.leaves()] == [(64, 8), (50, 8), (64, 4), (50, 4)]
    assert all(t.requires_grad and t.abs().min() > 0 for t in inp.leaves())  # never zeros
    ignored = inp.labels == -100
    assert 0 < int(ignored.sum()) < 64 and int(inp.labels[~ignored].max()) < 50
    before = [t.detach().clone() for t in inp.leaves()]
    refresh_inputs(inp, torch.Generator().manual_seed(1))
    assert all(not torch.equal(a, b) for a, b in zip(before, inp.leaves(), strict=True))
    assert torch.equal(inp.labels == -100, ignored)


def test_concatenation_gives_the_mixed_logits():
    case = LossCase(n=6, vocab=11, hs=5, hw=3, task="fwd", dtype="fp32", lam=0.3)
    inp = make_inputs(case, CPU, seed=2, requires_grad=False)
    h, w = concat_heads(case, inp)
    want = (0.3 * inp.hidden.double() @ inp.weight.double().T
            + 0.7 * inp.weak_hidden.double() @ inp.weak_weight.double().T)
    torch.testing.assert_close(h.double() @ w.double().T, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("task", ["fwd", "fwdbwd", "score"])
@pytest.mark.parametrize("hw", [0, 6])
def test_adapters_pass_the_correctness_check(task, hw):
    """Every torch-only implementation computes the same function as the float64 reference (CPU, fp32); the
    compile baselines are checked without torch.compile (same code, compiled on the GPU)."""
    case = LossCase(n=40, vocab=37, hs=8, hw=hw, task=task, dtype="fp32", lam=0.3)
    checker = Checker(CPU, check_n=24, seed=0)
    impls = [Ours("torch", "lean"), Ours("torch", "fast"), Eager(), CompileChunked(chunk_rows=8, use_compile=False),
             CompileChunkedGradInForward(chunk_rows=8, use_compile=False)]
    for impl in impls:
        if impl.unsupported(case):
            continue
        res = checker.check(impl, case)
        assert res["check_ok"], (impl.name, res)
        assert res["check_n"] == (8 if impl.name.startswith("compile") else 24)
        errs = [res[f"check_err_{k}"] for k in ("loss", "grad", "entropy", "nll")]
        assert (errs[1] is not None) == (task == "fwdbwd") and (errs[2] is not None) == (task == "score")


def test_chunked_compile_checks_at_its_chunk_so_one_graph_serves_check_and_timing():
    impl = CompileChunked(chunk_rows=2048)
    case = LossCase(n=16384, vocab=151936, hs=2560, hw=2560, task="fwdbwd")
    rows = impl.check_rows(case, 512)
    assert rows == 2048 and case.n % rows == 0  # every chunk of the check and of the timed call has 2048 rows
    assert impl.check_rows(case.with_n(1024), 512) == 1024


def test_names_modes_and_rating():
    assert [i.name for i in build_impls(["ours_torch_fast", "ours_triton_lean", "liger_fp32acc", "cce"])] == [
        "ours_torch_fast", "ours_triton_lean", "liger_fp32acc", "cce"]
    fast = Ours("torch", "fast")
    assert fast.kernel_mode == "fast" and fast.kind == "ours"
    assert fast.unsupported(LossCase(n=4, vocab=10, hs=8, hw=0, task="score"))  # scoring runs lean
    assert not CutCrossEntropy(filter=True).rated and CutCrossEntropy(filter=False).rated
    with pytest.raises(ValueError, match="unknown implementation"):
        build_impls(["ours_cuda_fast"])


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


def _harness(**kw):
    return Harness(CPU, env_info(CPU), FAST_TIMING, check_n=16, label="test", **kw)


@pytest.mark.parametrize("wrong,task", [(_WrongGradient, "fwdbwd"), (_WrongLoss, "fwd")])
def test_a_wrong_kernel_is_refused_and_not_timed(wrong, task):
    case = LossCase(n=32, vocab=29, hs=8, hw=8, task=task, dtype="fp32")
    harness = _harness()
    rows = {r["impl"]: r for r in harness.run_case(case, [wrong(), Eager()])}
    bad = rows["ours_wrong"]
    assert bad["status"] == "wrong" and bad["check_ok"] is False and bad.get("ms_median") is None
    assert all(bad.get(f"speedup_vs_{b}") is None for b in BASELINES)
    assert rows["eager"]["status"] == "ok" and rows["eager"]["check_ok"] is True
    assert harness.wrong == [f"{case.label()} ours_wrong"]


def test_oom_and_crashes_are_results_and_the_run_goes_on():
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

    case = LossCase(n=32, vocab=29, hs=8, hw=0, task="fwdbwd", dtype="fp32")
    rows = {r["impl"]: r for r in _harness().run_case(case, [Ours("torch", "lean"), OOM(), Crash(), Eager()])}
    oom, crash = rows["liger"], rows["cce"]
    inputs = (32 * 8 + 29 * 8) * 4 + 32 * 8
    assert oom["status"] == "OOM" and oom["mem_needed_bytes_min"] == inputs + (2 << 30) and "2.0 GiB" in oom["note"]
    assert crash["status"] == "error" and "illegal memory access" in crash["note"]
    assert rows["eager"]["status"] == rows["ours_torch_lean"]["status"] == "ok"
    assert rows["ours_torch_lean"]["speedup_vs_eager"] and rows["ours_torch_lean"].get("speedup_vs_liger") is None


def test_rows_record_mode_gemm_paths_and_counted_flops():
    case = LossCase(n=48, vocab=40, hs=16, hw=8, task="fwdbwd", dtype="fp32", ignore_frac=0.1)
    rows = _harness(interleave=True).run_case(case, [Ours("torch", "fast"), Ours("torch", "lean")], stage="s")
    gemm, fast, lean = rows
    assert gemm["task"] == "gemm" and gemm["impl"] == "torch_mm" and gemm["pct_gemm"] == 100.0
    assert all(set(r) <= set(COLUMNS) for r in rows) and {r["stage"] for r in rows} == {"s"}
    assert fast["kernel_mode"] == "fast" and lean["kernel_mode"] == "lean"
    assert '"mm_fp32"' in fast["gemm_paths"] and '"addmm_fp32"' in fast["gemm_paths"]
    assert fast["flops_counted_ratio"] == pytest.approx(1.0, rel=0.05)  # 6NVH (+2NV of row dots)
    assert lean["flops_counted_ratio"] == pytest.approx(4.0 / 3.0)  # 8NVH: the backward recomputes
    assert fast["pct_gemm"] == pytest.approx(100 * fast["tflops"] / gemm["tflops"])


def test_unavailable_and_stopped_implementations_are_reported_not_raised():
    class Missing(Impl):
        name = "cce"

        def unavailable(self, device):
            return "missing: cut-cross-entropy is not installed"

    case = LossCase(n=16, vocab=20, hs=8, hw=0, task="fwd", dtype="fp32")
    gemm, row = _harness().run_case(case, [Missing()])
    assert row["status"] == "missing" and "not installed" in row["note"]
    _, stopped = _harness().run_case(case, [Eager()], stop=lambda: True)
    assert stopped["status"] == "skipped" and "time budget" in stopped["note"]


def test_presets():
    args = bk.parse_args(["--preset", "sweep"])
    sweep = bk.preset_cases("sweep", args)
    assert {c.hs for c, _ in sweep} == set(bk.QWEN3_HIDDEN) and {c.n for c, _ in sweep} == set(bk.TOKENS)
    assert {c.heads for c, _ in sweep} == {1, 2} and {c.task for c, _ in sweep} == {"fwdbwd", "score"}
    modes = bk.preset_cases("cpu-modes", args)
    assert all(c.dtype == "fp32" and c.task == "fwdbwd" and names == bk.CPU_MODES_IMPLS for c, names in modes)
    with pytest.raises(SystemExit):
        bk.parse_args(["--hidden", "8"])  # --tokens missing
    with pytest.raises(SystemExit):
        bk.parse_args(["--preset", "smoke", "--tasks", "backward"])


def test_cli_runs_a_cpu_grid_end_to_end(tmp_path, capsys):
    """The CLI on a custom CPU grid: one schema, rows checked and timed, the table printed."""
    out = tmp_path / "bench"
    rc = bk.main(["--cpu", "--hidden", "16", "--tokens", "32", "--heads", "2,1", "--tasks", "fwdbwd,score",
                  "--vocab", "50", "--dtype", "fp32", "--out", str(out), "--reps", "1", "--min-reps", "1",
                  "--warmup", "1", "--check-n", "16", "--impls", "ours_torch_fast,ours_torch_lean,eager"])
    assert rc == 0
    assert "ours_torch_fast" in capsys.readouterr().out
    rows = read_jsonl(out / "results.jsonl")
    assert all(list(r) == list(COLUMNS) for r in rows)
    assert (out / "results.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    by = {(r["case"], r["impl"]): r for r in rows}
    for case in ("fwdbwd 2x16 N=32 V=50 fp32", "fwdbwd 1x16 N=32 V=50 fp32", "score 2x16 N=32 V=50 fp32"):
        lean = by[(case, "ours_torch_lean")]
        assert lean["status"] == "ok" and lean["check_ok"] and lean["speedup_vs_eager"]
    assert by[("score 1x16 N=32 V=50 fp32", "ours_torch_fast")]["status"] == "unsupported"
    assert all(r["stage"] == "grid" and r["device_type"] == "cpu" for r in rows)
