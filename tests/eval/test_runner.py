"""evaluate_model end to end: a fake generator (exact accuracy), the transformers backend on a tiny model,
pass@k, the Markdown table and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest

from wdl.eval import BenchmarkSpec, EvalConfig, comparison_table, evaluate_model, pass_at_k
from wdl.eval.cli import main

from .fakes import FakeGenerator

CANNED = {  # question substring -> model output
    "Tom has 3 apples": "<think>3 + 4 = 7</think>\nThe answer is 7.",  # right
    "A shirt costs": "5 shirts cost $60. The answer is $60.",  # right ($)
    "dropped 8 degrees": "It is now \\boxed{3} degrees.",  # wrong sign
    "1200 hens": "I am not sure.",  # no answer
    "What is 2 + 2?": "The answer is (B).",  # right
    "multiple of 4?": "The answer is a multiple of 4, so 12.",  # no letter: must not read as (A)
    "half of 9": "\\boxed{4.5}",  # right, by the option's value
}


def _cfg(bench_dir, **kw):
    benches = [BenchmarkSpec(name="gsm8k"), BenchmarkSpec(name="aqua")]
    return EvalConfig(benchmarks=benches, data_dir=str(bench_dir), progress=False, **kw)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fake_generator_exact_accuracy_and_files(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    out = tmp_path / "ev"
    fake = FakeGenerator(tiny_tokenizer, CANNED)
    res = evaluate_model(tiny_model_dir, _cfg(bench_dir), out, generator=fake)
    assert res["gsm8k"]["accuracy"] == 0.5 and res["gsm8k"]["n"] == 4
    assert res["gsm8k"]["n_correct"] == 2 and res["gsm8k"]["n_no_answer"] == 1
    assert res["aqua"]["accuracy"] == pytest.approx(2 / 3) and res["aqua"]["n"] == 3
    assert [c[:2] for c in fake.calls] == [("gsm8k", 4), ("aqua", 3)]

    rows = _rows(out / "gsm8k.jsonl")
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert [r["extracted"] for r in rows] == ["7", "$60", "3", None]
    assert rows[0]["gold"] == "7.0" and rows[0]["output"] == CANNED["Tom has 3 apples"]
    assert rows[0]["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.")
    aqua = _rows(out / "aqua.jsonl")
    assert [(r["extracted"], r["correct"]) for r in aqua] == [("B", True), (None, False), ("A", True)]
    with open(out / "gsm8k.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["correct"] for t in table] == ["True", "True", "False", "False"] and table[3]["extracted"] == ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"] == res and summary["backend"] == "fake"
    assert summary["decoding"] == {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "n": 1, "seed": 42}
    assert "| gsm8k | 4 | 50.0 |" in (out / "summary.md").read_text()
    assert not list(out.glob(".*.tmp"))  # atomic writes left nothing behind


def test_sampling_n_gives_unbiased_pass_at_k(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    canned = {"Tom has 3 apples": ["The answer is 7.", "The answer is 8.", "The answer is 7.", "no"],
              "A shirt costs": ["The answer is 1."] * 4,
              "dropped 8 degrees": ["\\boxed{-3}"] * 4,
              "1200 hens": ["The answer is 1500", "x", "x", "x"]}
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k")], data_dir=str(bench_dir), temperature=0.7, n=4,
                     pass_k=[1, 2, 4], progress=False)
    res = evaluate_model(tiny_model_dir, cfg, tmp_path, generator=FakeGenerator(tiny_tokenizer, canned))["gsm8k"]
    correct = [2, 0, 4, 1]
    assert res["n"] == 4 and res["n_generations"] == 16
    assert res["accuracy"] == pytest.approx(sum(correct) / 16) == res["pass@1"]
    for k in (2, 4):
        assert res[f"pass@{k}"] == pytest.approx(sum(pass_at_k(4, c, k) for c in correct) / 4)
    assert res["pass@4"] == 0.75
    assert [r["sample"] for r in _rows(tmp_path / "gsm8k.jsonl")][:4] == [0, 1, 2, 3]


def test_pass_at_k_formula():
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(5, 2))
    assert pass_at_k(5, 4, 2) == 1.0  # fewer wrong samples than k
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_comparison_table():
    md = comparison_table({
        "base": {"gsm8k": {"accuracy": 0.5, "n": 4}, "aime2025": {"accuracy": 0.1, "n": 30}},
        "wmss": {"gsm8k": {"accuracy": 0.75, "n": 4}, "aime2025": {"accuracy": 0.2, "n": 30},
                 "extra": {"accuracy": 1.0, "n": 2}},
    })
    lines = md.strip().splitlines()
    assert lines[0] == "| benchmark | n | base | wmss |"
    assert lines[2] == "| aime2025 | 30 | 10.0 | **20.0** |"  # paper order: AIME first
    assert lines[3] == "| gsm8k | 4 | 50.0 | **75.0** |"
    assert lines[4] == "| extra | 2 | – | 100.0 |"
    assert lines[5] == "| **mean (2 sets)** |  | 30.0 | **47.5** |"  # over the sets every model has
    with pytest.raises(ValueError):
        comparison_table({})


def test_empty_benchmark_list_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no benchmarks"):
        evaluate_model(tiny_model_dir, EvalConfig(), tmp_path)


def test_bad_file_fails_before_the_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P"}\n')
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="math500", path=str(bad))])
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1: missing field"):
        evaluate_model(tmp_path / "no-model-here", cfg, tmp_path / "out")


# ------------------------------------------------------------------------------ real generation, tiny model
def test_transformers_backend_end_to_end_is_deterministic(tiny_model_dir, bench_dir, tmp_path):
    cfg = _cfg(bench_dir, backend="transformers", max_new_tokens=12, batch_size=3)
    a = evaluate_model(tiny_model_dir, cfg, tmp_path / "a")
    evaluate_model(tiny_model_dir, cfg, tmp_path / "b")
    for bench, n in (("gsm8k", 4), ("aqua", 3)):
        assert a[bench]["n"] == n and 0.0 <= a[bench]["accuracy"] <= 1.0
        assert a[bench]["max_new_tokens"] == 12 and a[bench]["max_model_len"] == 2048  # capped by the model
        ra, rb = _rows(tmp_path / "a" / f"{bench}.jsonl"), _rows(tmp_path / "b" / f"{bench}.jsonl")
        assert [r["output"] for r in ra] == [r["output"] for r in rb]  # greedy twice: identical
        assert all(r["output_tokens"] >= 1 for r in ra)
        assert all(r["finish_reason"] in ("stop", "length") for r in ra)
        assert all((r["output_tokens"] == 12) == (r["finish_reason"] == "length") for r in ra)
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["backend"] == "transformers"


def test_batching_does_not_change_greedy_outputs(lively_model_dir, bench_dir, tmp_path):
    """Left padding must be invisible: batch size 1 and 4 give the same (varied, non-trivial) texts."""
    outs = []
    for bs in (1, 4):
        cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k")], data_dir=str(bench_dir), backend="transformers",
                         max_new_tokens=10, batch_size=bs, system_prompt="none", progress=False)
        evaluate_model(lively_model_dir, cfg, tmp_path / str(bs))
        outs.append([r["output"] for r in _rows(tmp_path / str(bs) / "gsm8k.jsonl")])
    assert outs[0] == outs[1]
    assert len(set(outs[0])) > 1 and all(len(set(o)) > 2 for o in outs[0])  # not one repeated token


def test_cli_transformers_and_compare(tiny_model_dir, bench_dir, tmp_path, capsys):
    rc = main([f"tiny={tiny_model_dir}", f"again={tiny_model_dir}", "--bench", "gsm8k",
               "--bench", f"mine={bench_dir / 'math500' / 'test.jsonl'}", "--data-dir", str(bench_dir),
               "--limit", "2", "--backend", "transformers", "--max-new-tokens", "4", "--no-thinking",
               "--system-prompt", "none", "--no-progress", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "| benchmark | n | tiny | again |"
    assert (tmp_path / "cmp" / "comparison.md").read_text() == printed
    for name in ("tiny", "again"):
        summary = json.loads((tmp_path / "cmp" / name / "summary.json").read_text())
        assert {b: r["n"] for b, r in summary["results"].items()} == {"gsm8k": 2, "mine": 2}
        assert summary["thinking"] is False and summary["system_prompt"] is None
    rows = _rows(tmp_path / "cmp" / "tiny" / "gsm8k.jsonl")
    assert rows[0]["prompt"].endswith("<think>\n\n</think>\n\n")

    assert main(["--compare", f"x={tmp_path / 'cmp' / 'tiny'}", f"y={tmp_path / 'cmp' / 'again'}"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "| benchmark | n | x | y |"


def test_cli_errors_are_messages(tmp_path, capsys):
    assert main(["m", "--bench", "gsm8k=/nonexistent.json", "--out", str(tmp_path)]) == 2
    assert "wdl eval: error: /nonexistent.json: no such benchmark file" in capsys.readouterr().err
    assert main(["m", "--out", str(tmp_path), "--bench", "g=/x.json", "--n", "3"]) == 2
    assert "n: n=3 samples of greedy decoding" in capsys.readouterr().err
    assert main(["--bench", "gsm8k"]) == 2
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--bench NAME[=PATH]" in capsys.readouterr().out


def test_cli_config_yaml(tiny_model_dir, bench_dir, tmp_path):
    (tmp_path / "run.yaml").write_text(
        "eval:\n  backend: transformers\n  max_new_tokens: 3\n  progress: false\n  benchmarks:\n"
        f"    - {{name: mine, path: {bench_dir / 'aime2025' / 'test.json'}, format: qa}}\n")
    assert main([str(tiny_model_dir), "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "summary.json").read_text())["results"]
    assert res["mine"]["n"] == 2 and res["mine"]["max_new_tokens"] == 3
    (tmp_path / "bad.yaml").write_text("benchmarks:\n  - {name: g, limit: -1}\n")
    assert main([str(tiny_model_dir), "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")]) == 2


def test_eval_in_another_interpreter(tiny_model_dir, bench_dir, tmp_path):
    """eval.python runs the evaluation as `PYTHON -m wdl.eval` (how the pipeline reaches the vLLM venv on CPUs);
    here with this interpreter under another path name, which counts as another interpreter."""
    import sys
    from pathlib import Path

    other = Path(sys.executable).with_name("python3")
    if not other.exists() or str(other) == sys.executable:
        pytest.skip("no second name for this interpreter")
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k", limit=2)], data_dir=str(bench_dir),
                     backend="transformers", max_new_tokens=3, progress=False, python=str(other))
    res = evaluate_model(tiny_model_dir, cfg, tmp_path / "sub", model_name="tiny")
    assert res["gsm8k"]["n"] == 2
    assert json.loads((tmp_path / "sub" / "summary.json").read_text())["config"]["python"] is None
    assert "| benchmark | n | tiny |" in (tmp_path / "sub" / "summary.md").read_text()
    with pytest.raises(ValueError, match="eval.python: /nonexistent/python does not exist"):
        evaluate_model(tiny_model_dir, EvalConfig(benchmarks=cfg.benchmarks, python="/nonexistent/python"),
                       tmp_path / "x")
