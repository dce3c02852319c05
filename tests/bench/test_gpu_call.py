"""scripts/gpu_call.py rehearsed on the CPU (--dry-run: the same stages and code path, tiny shapes), its time
guards and resuming, and the scripts around it (gpu_prepare.py, gpu_collect.py, tune_triton_tiles.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.harness import COLUMNS
from wdl.io import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_call.py"
STAGES = ("setup", "correctness", "breakdown", "kernels", "fp16-probe", "two-head", "one-head", "chunk-sweep",
          "two-head-8192")


def _call(tmp: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels")]))
    env.pop("OUT", None)
    return subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--wheels", str(tmp / "no-wheels"),
                           "--previous", "", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_call")
    out = tmp / "out"
    res = _call(tmp, "--out", str(out))
    return res, out


def test_rehearsal_runs_every_stage_and_ends_with_the_verdicts(rehearsal):
    res, out = rehearsal
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    info = json.loads((out / "call.json").read_text())
    assert list(info["stages"]) == list(STAGES)
    assert {v["status"] for v in info["stages"].values()} == {"ok"}, info["stages"]
    assert "skipped" in info["stages"]["correctness"]["note"]  # the GPU tests skip cleanly without CUDA
    assert info["gemm_paths"]["mm_fp32"] and info["env"]["device_type"] == "cpu" and info["dry_run"] is True
    for key in ("breakdown:phases:fast", "breakdown:phases:lean", "kernels:fast", "kernels:lean"):
        assert key in info, key
    probe = info["fp16-probe:errors"]
    assert probe["fast"]["finite"] and probe["lean"]["d_weight_unlabeled_rows"] < 1e-2
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("| scoring, N=16384") and lines[-1].endswith("| not measured |")
    assert (out / "call.log").read_text().strip().splitlines()[-1] == lines[-1]


def test_rehearsal_files_fit_what_the_device_tool_returns(rehearsal, scripts):
    _, out = rehearsal
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(scripts[3].FILES)
    assert len(names) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    assert all((out / n).is_file() and (out / n).stat().st_size < 16 << 20 for n in names)
    rows = read_jsonl(out / "results.jsonl")
    assert rows and all(set(r) == set(COLUMNS) for r in rows)
    assert {r["device_type"] for r in rows} == {"cpu"} and all(r["label"].startswith("CPU rehearsal") for r in rows)
    by = {(r["stage"], r["case"], r["impl"]): r for r in rows}
    two = "fwdbwd 2x32 N=128 V=500 bf16"
    for impl in ("ours_torch_fast", "ours_torch_lean", "compile_chunked", "compile_chunked_gif"):
        assert by[("two-head", two, impl)]["status"] == "ok", impl
    assert by[("two-head", two, "liger_fp32acc")]["status"] == "missing"  # not installed here: reported, not run
    assert by[("one-head", "fwdbwd 1x32 N=128 V=500 bf16", "cce")]["rated"] is False
    assert by[("breakdown", two + " ignore=0.1", "ours_torch_lean")]["status"] == "ok"  # a distinct case label
    assert "uncompiled stand-in" in by[("two-head", two, "compile_chunked")]["note"]
    sweep = [r for r in rows if r["stage"] == "chunk-sweep" and r["status"] == "ok"]
    assert len(sweep) == 5 and {json.loads(r["impl_config"])["token_chunk"] for r in sweep if r["impl_config"]} == {
        16, 32, 64, 128}
    assert all(r["kernel_mode"] in ("fast", "lean") for r in rows if r["kind"] == "ours")
    summary = (out / "summary.md").read_text()
    assert "## Targets" in summary and "## Stages" in summary and "## Breakdown" in summary and "PASS" not in summary


def test_a_spent_budget_skips_every_stage_and_says_so(tmp_path):
    res = _call(tmp_path, "--out", str(tmp_path / "out"), "--budget", "15", timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    info = json.loads((tmp_path / "out" / "call.json").read_text())
    assert info["stages"]["setup"]["status"] == "ok"
    for stage in STAGES[1:]:
        assert info["stages"][stage]["status"] == "skipped" and "left in the budget" in info["stages"][stage]["note"]
    assert "skipped: needs" in res.stdout and res.stdout.strip().endswith("| not measured |")


def test_a_repeated_call_carries_the_completed_stages(tmp_path, rehearsal):
    _, returned = rehearsal
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    (first / "results.jsonl").write_text((returned / "results.jsonl").read_text())
    info = json.loads((returned / "call.json").read_text())
    info["stages"]["chunk-sweep"]["status"] = "cut"  # as if the budget had run out during it
    (first / "call.json").write_text(json.dumps(info))
    res = _call(tmp_path, "--out", str(second), "--stages", "one-head,chunk-sweep", "--previous", str(first))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    info = json.loads((second / "call.json").read_text())
    assert info["stages"]["one-head"]["status"] == "done earlier" and info["stages"]["chunk-sweep"]["status"] == "ok"
    old = [r for r in read_jsonl(first / "results.jsonl") if r["stage"] == "one-head"]
    new = [r for r in read_jsonl(second / "results.jsonl") if r["stage"] == "one-head"]
    assert new == old  # carried as measured, with the earlier run's id


@pytest.fixture(scope="module")
def scripts():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_call
        import gpu_collect
        import gpu_prepare
        import tune_triton_tiles
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return gpu_prepare, gpu_collect, tune_triton_tiles, gpu_call


def test_bad_arguments_fail_fast(scripts, monkeypatch, capsys):
    gpu_call = scripts[3]
    monkeypatch.delenv("OUT", raising=False)
    for args, msg in ((["--dry-run", "--stages", "bogus"], "unknown ['bogus']"), (["--dry-run", "--budget", "0"],
                                                                                   "must be positive"),
                      ([], "$OUT is not set")):
        with pytest.raises(SystemExit):
            gpu_call.parse_args(args)
        assert msg in capsys.readouterr().err


def _wheel(folder: Path, name: str, version: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{name}/__init__.py", "")


def test_only_the_two_baseline_wheels_are_chosen(tmp_path, scripts):
    gpu_prepare = scripts[0]
    _wheel(tmp_path, "liger_kernel", "0.8.5")
    _wheel(tmp_path, "datasets", "4.0.0")  # fetch-wheels.sh brings more; the call installs none of them
    chosen, problems = gpu_prepare.select_wheels(tmp_path)
    assert [p.name for p in chosen] == ["liger_kernel-0.8.5-py3-none-any.whl"]
    assert len(problems) == 1 and "no cut_cross_entropy wheel" in problems[0]
    _wheel(tmp_path, "liger_kernel", "0.8.6")
    _wheel(tmp_path, "cut_cross_entropy", "25.1.1")
    chosen, problems = gpu_prepare.select_wheels(tmp_path)
    assert [p.name for p in chosen] == ["cut_cross_entropy-25.1.1-py3-none-any.whl"]
    assert "2 versions of liger_kernel" in problems[0]


def test_prepare_stamps_the_source_and_keeps_a_returned_call(tmp_path, scripts, rehearsal, capsys):
    gpu_prepare = scripts[0]
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    (repo / "f.txt").write_text("x\n")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    assert gpu_prepare.main(["--root", str(repo)]) == 0
    stamp = json.loads((repo / ".gpu" / "source.json").read_text())
    assert stamp["git_commit"] == git("rev-parse", "HEAD").stdout.strip() and stamp["git_dirty"] is False
    out = capsys.readouterr().out
    assert "command: python3 scripts/gpu_call.py" in out and '[".whl", ".gpu"]' in out and "no liger_kernel" in out
    _, returned = rehearsal
    assert gpu_prepare.main(["--root", str(repo), "--done", str(returned)]) == 0
    assert (repo / ".gpu" / "previous" / "call.json").is_file()
    assert "skips correctness, breakdown" in capsys.readouterr().out
    assert gpu_prepare.main(["--root", str(repo), "--reset"]) == 0
    assert not (repo / ".gpu" / "previous").exists()
    exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
    assert exclude.count("/.gpu/") == 1 and exclude.count("/.whl/") == 1
    assert git("status", "--porcelain").stdout.strip() == ""  # .gpu/ stays out of git
    with pytest.raises(SystemExit, match="no results.jsonl"):
        gpu_prepare.main(["--root", str(repo), "--done", str(tmp_path)])


def test_collect_makes_a_run_directory_and_rewrites_only_the_marked_sections(tmp_path, scripts, rehearsal, capsys):
    gpu_collect = scripts[1]
    _, returned = rehearsal
    dest, doc = tmp_path / "results", tmp_path / "benchmarks.md"
    begin, end = gpu_collect.MARKERS["cpu"]
    doc.write_text(f"intro\n{begin}\nold table\n{end}\noutro\n")
    other = tmp_path / "other.md"
    other.write_text("no markers here\n")
    assert gpu_collect.main([str(returned), "--dest", str(dest), "--docs", str(doc)]) == 2
    assert "GPU results only" in capsys.readouterr().err
    assert gpu_collect.main([str(returned), "--dest", str(dest), "--docs", str(doc), str(other), "--allow-cpu"]) == 0
    assert "git add" in capsys.readouterr().out
    (run_dir,) = (dest / "cpu").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_cpu_[0-9a-f]{8}", run_dir.name)
    assert {p.name for p in run_dir.iterdir()} == {"results.csv", "results.jsonl", "summary.md", "kernel_bench.png",
                                                   "call.json", "call.log", "pytest_gpu.log", "pytest_gpu.xml"}
    assert read_jsonl(run_dir / "results.jsonl") == read_jsonl(returned / "results.jsonl")
    assert (run_dir / "results.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert "## Stages" in (run_dir / "summary.md").read_text()
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old table" not in text
    assert "| target | measured | verdict |" in text and "CPU rehearsal" in text
    assert other.read_text() == "no markers here\n"
    assert gpu_collect.main([str(returned), "--dest", str(dest), "--docs", "--allow-cpu"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert gpu_collect.main([str(tmp_path), "--dest", str(dest)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err


def test_tile_tuner_drives_the_current_backend(scripts, monkeypatch):
    """Without a GPU the tuner refuses; its timing body runs the backend's real entry points (interpreter)."""
    import torch
    from wdl_kernels.options import LossOptions
    from wdl_kernels.problem import Problem
    from wdl_kernels.triton_backend import TritonBackend

    tune = scripts[2]
    if torch.cuda.is_available():
        pytest.skip("the no-GPU path")
    assert tune.main([]) == 2
    calls = []
    monkeypatch.setattr(tune, "median_ms", lambda fn, reps: calls.append(fn()) or 1.0)
    g = torch.Generator().manual_seed(0)
    hs, ws = torch.randn(20, 16, generator=g), torch.randn(70, 16, generator=g) * 0.25
    prob = Problem(hs, ws, None, None, torch.randint(0, 70, (20,), generator=g), None, LossOptions())
    backend = TritonBackend.for_device(torch.device("cpu"))
    t = tune.time_config(replace_tiles(backend), prob, reps=1)
    assert len(calls) == 3 and t["fast_token_chunk"] == 20 and t["lean_vocab_chunk"] == 70


def replace_tiles(backend):
    from dataclasses import replace

    return replace(backend, block_m=16, block_n=32, block_k=16)
