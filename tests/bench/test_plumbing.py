"""bench/env.py, timing.py, memory.py, writer.py: environment record, timing, memory helpers, the results files."""

from __future__ import annotations

import csv
import json
import socket

import pytest
import torch

from bench.env import ENV_COLUMNS, env_info, run_id
from bench.memory import is_oom, measure_memory, oom_tried_bytes, tensor_bytes
from bench.timing import Timing, TimingConfig, time_fn, time_interleaved
from bench.writer import ResultsWriter
from wdl.io import read_jsonl


def test_env_info_has_exactly_the_env_columns_and_no_hostname():
    env = env_info("cpu")
    assert set(env) == set(ENV_COLUMNS)
    assert env["device_type"] == "cpu" and env["torch_version"] == torch.__version__
    assert env["date_utc"].endswith("Z") and len(env["date_utc"]) == 20
    assert env["git_commit"] is None or len(env["git_commit"]) == 40
    host = socket.gethostname()
    assert all(host not in str(v) for v in env.values())
    rid = run_id(env)
    assert rid.endswith("_cpu") and " " not in rid


def test_source_state_falls_back_to_the_stamp(tmp_path, monkeypatch):
    import bench.env as env

    stamp = tmp_path / "source.json"
    stamp.write_text(json.dumps({"git_commit": "a" * 40, "git_dirty": True, "prepared_utc": "2026-01-02T03:04:05Z"}))
    monkeypatch.setenv("WDL_SOURCE_STAMP", str(stamp))
    monkeypatch.setattr(env, "_run", lambda cmd, cwd=None: None)  # as on the GPU machine: no git
    assert env.source_state() == {"git_commit": "a" * 40, "git_dirty": True,
                                     "source": "stamp 2026-01-02T03:04:05Z"}
    stamp.unlink()
    assert env.source_state()["source"] == "unknown"


def test_timing_statistics():
    t = Timing.from_samples([5.0, 1.0, 3.0, 2.0, 4.0], first_call_s=0.5)
    assert (t.ms_median, t.reps, t.first_call_s) == (3.0, 5, 0.5)
    assert t.ms_p20 == pytest.approx(1.8) and t.ms_p80 == pytest.approx(4.2)
    with pytest.raises(ValueError):
        Timing.from_samples([], 0.0)


def test_timing_config_fits_reps_into_the_budget():
    cfg = TimingConfig(warmup=1, reps=10, min_reps=3, rep_budget_s=1.0)
    assert cfg.reps_for(1.0) == 10  # fast: capped at reps
    assert cfg.reps_for(250.0) == 4  # 1 s / 250 ms
    assert cfg.reps_for(10_000.0) == 3  # slow: at least min_reps
    for bad in (dict(reps=0), dict(min_reps=5, reps=4), dict(warmup=-1), dict(rep_budget_s=0)):
        with pytest.raises(ValueError):
            TimingConfig(**bad)


def test_cpu_timing_refreshes_before_every_call_and_drops_outputs():
    calls, refreshed = [], []
    cfg = TimingConfig(warmup=2, reps=4, min_reps=4, rep_budget_s=100.0)
    t = time_fn(lambda: calls.append(1) or torch.ones(3), torch.device("cpu"), cfg,
                before_each=lambda: refreshed.append(1))
    assert t.reps == 4 and len(calls) == 6 and len(refreshed) == 6
    assert t.ms_p20 <= t.ms_median <= t.ms_p80


def test_interleaved_timing_alternates_the_functions():
    order = []
    cfg = TimingConfig(warmup=1, reps=3, min_reps=3, rep_budget_s=100.0)
    a, b = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], torch.device("cpu"), cfg)
    assert a.reps == b.reps == 3
    assert order == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then rounds


def test_tensor_bytes_counts_shared_storage_once():
    a = torch.zeros(10, 4)
    b = torch.zeros(3, dtype=torch.float16)
    assert tensor_bytes(a) == 160
    assert tensor_bytes((a, a[:5], {"x": [b]}, None, 3)) == 160 + 6


def test_memory_is_not_measured_on_the_cpu():
    assert measure_memory(lambda: torch.ones(4), 16, torch.device("cpu")) is None


def test_oom_helpers():
    e = RuntimeError("CUDA out of memory. Tried to allocate 9.27 GiB. GPU 0 has a total capacity of 79.1 GiB")
    assert is_oom(e) and oom_tried_bytes(e) == int(9.27 * (1 << 30))
    assert oom_tried_bytes(RuntimeError("Tried to allocate 512.00 MiB")) == 512 << 20
    assert not is_oom(ValueError("shape mismatch")) and oom_tried_bytes(ValueError("x")) is None


def test_results_writer_appends_one_schema_to_csv_and_jsonl(tmp_path):
    w = ResultsWriter(tmp_path / "out", ["a", "b", "c"])
    w.append([{"a": 1, "b": 2.5, "c": None}])
    w.append([{"a": 2, "c": "x,y"}, {"b": True}])
    with open(w.csv_path) as f:
        table = list(csv.reader(f))
    assert table == [["a", "b", "c"], ["1", "2.5", ""], ["2", "", "x,y"], ["", "True", ""]]
    assert read_jsonl(w.jsonl_path) == [{"a": 1, "b": 2.5, "c": None}, {"a": 2, "b": None, "c": "x,y"},
                                        {"a": None, "b": True, "c": None}]
    assert not list((tmp_path / "out").glob(".*tmp"))  # no temporaries left behind
    with pytest.raises(ValueError, match="outside the schema"):
        w.append([{"zzz": 1}])
    assert len(read_jsonl(w.jsonl_path)) == 3  # a rejected append writes nothing
    with pytest.raises(ValueError, match="another schema"):
        ResultsWriter(tmp_path / "out", ["a", "b"])  # reopening with a different header
    ResultsWriter(tmp_path / "out", ["a", "b", "c"]).append([{"a": 3}])
    assert len(read_jsonl(w.jsonl_path)) == 4


@pytest.mark.gpu
def test_cuda_timing_and_memory_on_a_real_gpu():
    from bench.timing import L2Flusher

    dev = torch.device("cuda")
    a = torch.randn(2048, 2048, device=dev, dtype=torch.bfloat16)
    t = time_fn(lambda: a @ a, dev, TimingConfig(warmup=1, reps=5, min_reps=5), flusher=L2Flusher(dev))
    assert t.reps == 5 and 0 < t.ms_p20 <= t.ms_median <= t.ms_p80

    def call():
        workspace = torch.empty(1 << 20, device=dev)  # 4 MiB, freed before returning
        workspace.fill_(1.0)
        return torch.ones(1 << 18, device=dev)  # 1 MiB, returned

    mem = measure_memory(call, 123, dev)
    assert mem.outputs_bytes == 1 << 20 and mem.inputs_bytes == 123
    assert 4 << 20 <= mem.extra_bytes < 5 << 20 and mem.peak_bytes == 123 + mem.extra_bytes + mem.outputs_bytes
