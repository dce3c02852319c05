"""scripts/gpu_session.sh rehearsed on the CPU (--dry-run), end to end, and scripts/gpu_collect.py on its output."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.bench_kernel import COLUMNS
from bench.common import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_session.sh"


def _probe_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, so the rehearsal exercises the real offline install step."""
    folder.mkdir(parents=True)
    whl = folder / "wdl_dryrun_probe-0.0.1-py3-none-any.whl"
    di = "wdl_dryrun_probe-0.0.1.dist-info"
    files = {
        "wdl_dryrun_probe.py": "VALUE = 42\n",
        f"{di}/METADATA": "Metadata-Version: 2.1\nName: wdl-dryrun-probe\nVersion: 0.0.1\n",
        f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{di}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{di}/RECORD,,\n"
    with zipfile.ZipFile(whl, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return whl


def _kernel_tests(folder: Path) -> Path:
    """Stands in for tests/kernels: the stage must run the gpu-marked test only."""
    folder.mkdir(parents=True)
    (folder / "test_probe.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.gpu\n"
        "def test_selected():\n    pass\n\n"
        "def test_not_selected():\n    raise AssertionError('the tests stage must select -m gpu only')\n")
    return folder


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_session")
    out = tmp / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, WDL_WHEELS=str(tmp / "wheels"),
               WDL_SKIP_DONE=str(tmp / "no-earlier-calls.jsonl"),
               WDL_KERNEL_TESTS=str(_kernel_tests(tmp / "kt")),
               WDL_BENCH_EXTRA="--impls torch --baselines eager --reps 1 --min-reps 1 --warmup 1 --check-n 16")
    _probe_wheel(tmp / "wheels")
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--stages", "tests,sm90,target", "--budget", "300"],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=240)
    return res, out


def test_dry_run_succeeds_and_reports_every_stage(dry_run):
    res, out = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    text = res.stdout
    assert "installed 1 wheels" in text and "wdl_kernels from" in text
    for stage in ("setup", "tests", "sm90", "target"):
        assert re.search(rf"^  {stage}\s+rc=0$", text, re.M), stage
    assert "1 passed, 1 deselected" in (out / "pytest_gpu.log").read_text()
    # the short table comes last, followed by the targets
    tail = text.strip().splitlines()
    assert tail[-1].startswith("| forward-only scoring") and any(line.startswith("case ") for line in tail[-40:])
    assert (out / "session.log").read_text().strip().splitlines()[-1] == tail[-1]


def test_dry_run_files_fit_what_the_device_tool_returns(dry_run):
    _, out = dry_run
    names = sorted(p.name for p in out.iterdir())
    assert names == ["kernel_bench.png", "pytest_gpu.log", "results.csv", "results.jsonl", "session.log",
                     "summary.md"]
    assert len(names) <= 8 and all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
    assert all((out / n).stat().st_size < 16 << 20 for n in names)
    rows = read_jsonl(out / "results.jsonl")
    assert rows and all(set(r) == set(COLUMNS) for r in rows)
    assert {r["device_type"] for r in rows} == {"cpu"} and all(r["label"].startswith("CPU") for r in rows)
    assert {r["case"] for r in rows if r["impl"] == "ours_torch" and r["status"] == "ok"} == {
        "fwdbwd 2x32 N=64 V=500 fp32", "fwdbwd 1x32 N=64 V=500 fp32", "score 1x32 N=64 V=500 fp32",
        "fwd 1x32 N=64 V=500 fp32"}


@pytest.fixture(scope="module")
def gpu_collect():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_collect
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return gpu_collect


def test_collect_makes_a_committable_run_directory(dry_run, tmp_path, gpu_collect, capsys):
    _, out = dry_run
    dest = tmp_path / "results"
    assert gpu_collect.main([str(out), "--dest", str(dest)]) == 2
    assert "GPU results only" in capsys.readouterr().err
    assert gpu_collect.main([str(out), "--dest", str(dest), "--allow-cpu"]) == 0
    assert "git add" in capsys.readouterr().out
    (run_dir,) = (dest / "cpu").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_cpu_([0-9a-f]{8}|nogit)", run_dir.name.split("+")[0])
    assert {p.name for p in run_dir.iterdir()} == {"results.csv", "results.jsonl", "summary.md", "kernel_bench.png",
                                                   "session.log", "pytest_gpu.log"}
    assert read_jsonl(run_dir / "results.jsonl") == read_jsonl(out / "results.jsonl")
    assert (run_dir / "results.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert gpu_collect.main([str(out), "--dest", str(dest), "--allow-cpu"]) == 2
    assert "exists already" in capsys.readouterr().err
    assert gpu_collect.main([str(tmp_path), "--dest", str(dest)]) == 2  # not a returned folder
    assert "no results.jsonl" in capsys.readouterr().err


def test_collect_rewrites_only_the_marked_docs_section(tmp_path, gpu_collect):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    row = dict.fromkeys(COLUMNS)
    row.update(device_type="cuda", device_name="test-device", git_commit="c" * 40, torch_version="t", mode="fwdbwd",
               triton_version="x", date_utc="2026-01-01T00:00:00Z", case="fwdbwd 2x2560 N=16384 V=151936 bf16",
               impl="ours_triton", kind="ours", status="ok", n=16384, hs=2560, hw=2560, vocab=151936, dtype="bf16",
               ms_median=1.0, pct_gemm=1.0)  # synthetic, test-only values
    (run_dir / "results.jsonl").write_text(json.dumps(row) + "\n")
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"intro\n{gpu_collect.BEGIN}\nold table\n{gpu_collect.END}\noutro\n")
    gpu_collect.update_docs(docs, run_dir)
    text = docs.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old table" not in text
    assert "test-device" in text and "| target (issue 2) |" in text and "cccccccccccc" in text
    docs.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        gpu_collect.update_docs(docs, run_dir)


@pytest.fixture(scope="module")
def e2e_dry_run(tmp_path_factory):
    """The end-to-end stages rehearsed in one call (tiny shapes on the CPU)."""
    tmp = tmp_path_factory.mktemp("gpu_session_e2e")
    out = tmp / "out"
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, WDL_WHEELS=str(tmp / "no-wheels"))
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--stages", "e2e-maxseq,e2e-offload", "--budget", "400"],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=400)
    return res, out


def test_e2e_stages_record_rows_and_judge_the_targets(e2e_dry_run, tmp_path, gpu_collect, capsys):
    from bench.bench_e2e import COLUMNS as E2E_COLUMNS

    res, out = e2e_dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    for stage in ("e2e-maxseq", "e2e-offload"):
        assert re.search(rf"^  {stage}\s+rc=0$", res.stdout, re.M), stage
    assert sorted(p.name for p in out.iterdir()) == ["e2e.csv", "e2e.jsonl", "e2e.png", "e2e_summary.md",
                                                     "session.log"]
    rows = read_jsonl(out / "e2e.jsonl")
    assert all(set(r) == set(E2E_COLUMNS) for r in rows)
    assert {(r["kind"], r["path"]) for r in rows if r["mode"] == "joint"} == {("max_seq", "fused"),
                                                                               ("max_seq", "reference")}
    (off,) = [r for r in rows if r["mode"] == "joint_frozen"]
    assert off["status"] == "ok" and off["backend"] == "fsdp2" and off["fsdp_cpu_offload"] is True
    # a CPU rehearsal measures none of the GPU targets, and says so
    summary = (out / "e2e_summary.md").read_text()
    assert summary.count("| not measured |") == 4 and "PASS" not in summary
    assert res.stdout.strip().splitlines()[-1].endswith("| not measured |")
    dest = tmp_path / "results"
    assert gpu_collect.main([str(out), "--dest", str(dest / "k"), "--e2e-dest", str(dest / "e"), "--allow-cpu"]) == 0
    assert "git add" in capsys.readouterr().out
    assert not (dest / "k").exists()  # no kernel rows in this call
    (run_dir,) = (dest / "e" / "cpu").iterdir()
    assert {p.name for p in run_dir.iterdir()} == {"e2e.csv", "e2e.jsonl", "e2e.png", "e2e_summary.md",
                                                   "session.log"}
    assert read_jsonl(run_dir / "e2e.jsonl") == rows


@pytest.mark.parametrize("args,msg", [(["--stages", "tests,bogus"], "unknown stage 'bogus'"),
                                      (["--budget", "ten"], "whole seconds"),
                                      (["--frobnicate"], "unknown argument")])
def test_bad_arguments_fail_fast(args, msg, tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), *args], env=dict(os.environ, OUT=str(tmp_path)),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and msg in res.stderr


def test_a_real_session_needs_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    res = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "$OUT is not set" in res.stderr
    helped = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--stages" in helped.stdout and "sweep-fwdbwd" in helped.stdout


def test_prepare_stamps_the_source_and_remembers_returned_rows(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gpu_prepare
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    repo = tmp_path / "repo"
    repo.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True, text=True)  # noqa: E731
    git("init", "-q")
    (repo / "f.txt").write_text("x\n")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD").stdout.strip()
    try:
        assert gpu_prepare.main(["--root", str(repo)]) == 0
        stamp = json.loads((repo / ".gpu" / "source.json").read_text())
        assert stamp["git_commit"] == head and stamp["git_dirty"] is False
        (repo / "f.txt").write_text("changed\n")
        returned = tmp_path / "results.jsonl"
        returned.write_text('{"case": "c", "impl": "i", "status": "ok"}\n')
        assert gpu_prepare.main(["--root", str(repo), "--done", str(returned)]) == 0
        assert gpu_prepare.main(["--root", str(repo), "--done", str(returned)]) == 0
        stamp = json.loads((repo / ".gpu" / "source.json").read_text())
        assert stamp["git_dirty"] is True and stamp["changed_files"] == ["f.txt"]
        assert len((repo / ".gpu" / "done.jsonl").read_text().splitlines()) == 2
        assert gpu_prepare.main(["--root", str(repo), "--reset"]) == 0
        assert not (repo / ".gpu" / "done.jsonl").read_text().strip()
        exclude = (repo / ".git" / "info" / "exclude").read_text().splitlines()
        assert exclude.count("/.gpu/") == 1 and exclude.count("/.whl/") == 1
        assert git("status", "--porcelain").stdout.strip() == "M f.txt"  # .gpu/ stays out of git
        out = capsys.readouterr().out
        assert "lacks liger_kernel" in out and "gpu_session.sh --stages sm90,tests,target" in out
    finally:
        gpu_prepare.ROOT = ROOT
