"""evaluate_model end to end: a fake generator (exact accuracies under both graders), the transformers backend
on a tiny model, the metrics (mean@n, observed and unbiased pass@k), the Markdown tables and the CLI."""

from __future__ import annotations

import csv
import json
import math

import pytest

from wdl.eval import BenchmarkSpec, EvalConfig, comparison_table, evaluate_model, pass_at_k, summarize
from wdl.eval.cli import main
from wdl.eval.report import graded_by, side_by_side_table

from .fakes import FakeGenerator

CANNED = {  # question substring -> model output
    "Tom has 3 apples": "<think>3 + 4 = 7</think>\nThe answer is 7.",  # no LaTeX: lenient only
    "A shirt costs": "<think>5 * 12 = 60</think>\nThe answer is \\boxed{60}.",  # right for both
    "dropped 8 degrees": "It is now \\boxed{3} degrees.",  # wrong sign
    "1200 hens": "I am not sure.",  # no answer
    "What is 2 + 2?": "The answer is (B).",  # right
    "multiple of 4?": "The answer is a multiple of 4, so 12.",  # the reference reads choice A, lenient nothing
    "half of 9": "\\boxed{4.5}",  # right, by the option's value
}


def _cfg(bench_dir, **kw):
    benches = [BenchmarkSpec(name="gsm8k"), BenchmarkSpec(name="aqua")]
    return EvalConfig(benchmarks=benches, data_dir=str(bench_dir), progress=False, allow_row_count_mismatch=True,
                      **kw)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_fake_generator_exact_accuracy_and_files(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    out = tmp_path / "ev"
    fake = FakeGenerator(tiny_tokenizer, CANNED)
    res = evaluate_model(tiny_model_dir, _cfg(bench_dir), out, generator=fake)
    g = res["gsm8k"]
    assert (g["accuracy"], g["n"], g["n_correct"], g["n_no_answer"]) == (0.25, 4, 1, 2)
    assert (g["accuracy_reference"], g["accuracy_lenient"]) == (0.25, 0.5)
    assert (g["grader"], g["protocol"], g["mode"]) == ("reference", "paper", "greedy")
    assert g["pass@1"] == g["first_sample_accuracy"] == g["mean@1"] == 0.25
    assert res["aqua"]["accuracy"] == pytest.approx(2 / 3) and res["aqua"]["n"] == 3
    assert res["aqua"]["accuracy_lenient"] == pytest.approx(2 / 3)
    assert [c[:2] for c in fake.calls] == [("gsm8k", 4), ("aqua", 3)]

    rows = _rows(out / "gsm8k.jsonl")
    assert [r["correct"] for r in rows] == [False, True, False, False]
    assert [r["correct_lenient"] for r in rows] == [True, True, False, False]
    assert [r["extracted"] for r in rows] == [None, "60", "3", None]
    assert [r["position"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["gold"] == "7.0" and rows[0]["output"] == CANNED["Tom has 3 apples"]
    assert rows[0]["prompt"].startswith("<|im_start|>system\nYou are a helpful assistant.")
    aqua = _rows(out / "aqua.jsonl")
    assert [(r["extracted"], r["method"], r["correct"]) for r in aqua] == [
        ("B", "choice", True), ("A", "choice", False), ("A", "choice_value", True)]
    with open(out / "gsm8k.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [t["correct"] for t in table] == ["False", "True", "False", "False"] and table[3]["extracted"] == ""
    assert list(table[0])[-2:] == ["correct_lenient", "correct_reference"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"] == res and summary["backend"] == "fake"
    assert summary["decoding"] == {"mode": "greedy", "temperature": 0.0, "top_p": 1.0, "top_k": -1, "n": 1,
                                   "seed": 42, "repetition_penalty": 1.0}
    assert (summary["protocol"], summary["grader"], summary["compared_graders"]) == ("paper", "reference",
                                                                                     ["lenient"])
    md = (out / "summary.md").read_text()
    assert md.startswith("Accuracy: grader reference, protocol paper, mode greedy.")
    assert "| gsm8k | 4 | 25.0 |" in md and "| gsm8k | 4 | 25.0 | **50.0** |" in md  # the side-by-side table
    assert not list(out.glob(".*.tmp"))  # atomic writes left nothing behind


def test_lenient_grader_is_an_option(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    res = evaluate_model(tiny_model_dir, _cfg(bench_dir, grader="lenient"), tmp_path,
                         generator=FakeGenerator(tiny_tokenizer, CANNED))
    assert (res["gsm8k"]["accuracy"], res["gsm8k"]["grader"], res["gsm8k"]["accuracy_reference"]) == (
        0.5, "lenient", 0.25)
    rows = _rows(tmp_path / "gsm8k.jsonl")
    assert [r["extracted"] for r in rows] == ["7", "60", "3", None]
    res = evaluate_model(tiny_model_dir, _cfg(bench_dir, compare_graders=False), tmp_path / "one",
                         generator=FakeGenerator(tiny_tokenizer, CANNED))
    assert not [k for k in res["gsm8k"] if k.startswith("accuracy_")]
    assert "correct_lenient" not in _rows(tmp_path / "one" / "gsm8k.jsonl")[0]


def test_sampling_metrics_mean_observed_and_unbiased_pass_at_k(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    canned = {"Tom has 3 apples": ["\\boxed{7}", "\\boxed{8}", "\\boxed{7}", "no"],
              "A shirt costs": ["\\boxed{1}"] * 4,
              "dropped 8 degrees": ["\\boxed{-3}"] * 4,
              "1200 hens": ["x", "x", "x", "\\boxed{1500}"]}
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k")], data_dir=str(bench_dir), mode="passk", n=4,
                     pass_k=[1, 2, 4], progress=False, allow_row_count_mismatch=True)
    fake = FakeGenerator(tiny_tokenizer, canned)
    res = evaluate_model(tiny_model_dir, cfg, tmp_path, generator=fake)["gsm8k"]
    assert fake.calls[0][2].temperature == 0.5 and fake.calls[0][2].n == 4 and fake.calls[0][2].seed == 42
    correct = [2, 0, 4, 1]
    assert res["n"] == 4 and res["n_generations"] == 16 and res["n_samples"] == 4 and res["mode"] == "passk"
    assert res["accuracy"] == res["mean@4"] == pytest.approx(sum(correct) / 16) == res["pass@1_unbiased"]
    assert res["pass@4"] == 0.75 == res["pass@4_unbiased"]  # observed: 3 of 4 prompts have a correct sample
    assert res["pass@2_unbiased"] == pytest.approx(sum(pass_at_k(4, c, 2) for c in correct) / 4)
    assert res["first_sample_accuracy"] == 0.5 and res["pass@1"] is None  # sample 0 of n=4 is no pass@1
    assert [r["sample"] for r in _rows(tmp_path / "gsm8k.jsonl")][:4] == [0, 1, 2, 3]


def test_summarize_keeps_mean_and_pass_apart():
    """The reference's own aggregation check: 16 generations, one correct."""
    rows = [{"position": p, "sample": s, "correct": p == 0 and s == 7, "extracted": None, "truncated": s == 0,
             "output_tokens": 10, "prompt_truncated": False} for p in range(2) for s in range(8)]
    m = summarize(rows, 8)
    assert (m["mean@8"], m["pass@8"], m["first_sample_accuracy"], m["pass@1"]) == (1 / 16, 1 / 2, 0, None)
    assert (m["n_truncated"], m["truncation_rate"]) == (2, 1 / 8)
    with pytest.raises(RuntimeError, match="prompt 1: samples"):
        summarize(rows[:-1], 8)


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


def test_side_by_side_and_provenance_line():
    results = {"sft": {"gsm8k": {"accuracy": 0.5, "n": 4, "grader": "reference", "protocol": "paper",
                                 "mode": "greedy", "accuracy_reference": 0.5, "accuracy_lenient": 0.75}}}
    md = side_by_side_table(results).splitlines()
    assert md[0] == "| benchmark | n | sft (reference) | sft (lenient) |"
    assert md[2] == "| gsm8k | 4 | 50.0 | **75.0** |"
    assert graded_by(results) == "Accuracy: grader reference, protocol paper, mode greedy."
    results["wmss"] = {"gsm8k": {"accuracy": 0.7, "n": 4, "grader": "lenient", "protocol": "paper", "mode": "greedy"}}
    assert graded_by(results) == ("Accuracies come from several settings: sft: grader reference, protocol paper, "
                                  "mode greedy; wmss: grader lenient, protocol paper, mode greedy.")
    results["wmss"]["aime2025"] = {"accuracy": 0.1, "n": 30, "grader": "reference", "protocol": "opd",
                                   "mode": "greedy"}
    assert graded_by(results).endswith("; wmss gsm8k: grader lenient, protocol paper, mode greedy; wmss aime2025: "
                                       "grader reference, protocol opd, mode greedy.")
    assert side_by_side_table({"m": {"g": {"accuracy": 1.0, "n": 1}}}) == ""


def test_empty_benchmark_list_is_an_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no benchmarks"):
        evaluate_model(tiny_model_dir, EvalConfig(), tmp_path)


def test_bad_file_fails_before_the_model_loads(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"problem": "P"}\n')
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="math500", path=str(bad))], allow_row_count_mismatch=True)
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1: no answer"):
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
                         max_new_tokens=10, batch_size=bs, system_prompt="none", progress=False,
                         allow_row_count_mismatch=True)
        evaluate_model(lively_model_dir, cfg, tmp_path / str(bs))
        outs.append([r["output"] for r in _rows(tmp_path / str(bs) / "gsm8k.jsonl")])
    assert outs[0] == outs[1]
    assert len(set(outs[0])) > 1 and all(len(set(o)) > 2 for o in outs[0])  # not one repeated token


def test_cli_transformers_and_compare(tiny_model_dir, bench_dir, tmp_path, capsys):
    rc = main([f"tiny={tiny_model_dir}", f"again={tiny_model_dir}", "--bench", "gsm8k",
               "--bench", f"mine={bench_dir / 'math500' / 'test.jsonl'}", "--data-dir", str(bench_dir),
               "--limit", "2", "--allow-row-count-mismatch", "--backend", "transformers", "--max-new-tokens", "4",
               "--no-thinking",
               "--system-prompt", "none", "--no-progress", "--out", str(tmp_path / "cmp")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "Accuracy: grader reference, protocol paper, mode greedy."
    assert printed.splitlines()[2] == "| benchmark | n | tiny | again |"
    assert (tmp_path / "cmp" / "comparison.md").read_text() == printed
    for name in ("tiny", "again"):
        summary = json.loads((tmp_path / "cmp" / name / "summary.json").read_text())
        assert {b: r["n"] for b, r in summary["results"].items()} == {"gsm8k": 2, "mine": 2}
        assert summary["thinking"] is False and summary["system_prompt"] is None
    rows = _rows(tmp_path / "cmp" / "tiny" / "gsm8k.jsonl")
    assert rows[0]["prompt"].endswith("<think>\n\n</think>\n\n")

    assert main(["--compare", f"x={tmp_path / 'cmp' / 'tiny'}", f"y={tmp_path / 'cmp' / 'again'}",
                 "--side-by-side"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "Accuracy: grader reference, protocol paper, mode greedy."
    assert printed[2] == "| benchmark | n | x | y |"
    assert "| benchmark | n | x (reference) | x (lenient) | y (reference) | y (lenient) |" in printed


def test_cli_errors_are_messages(tmp_path, capsys):
    assert main(["m", "--bench", "gsm8k=/nonexistent.json", "--out", str(tmp_path)]) == 2
    assert "wdl eval: error: /nonexistent.json: no such benchmark file" in capsys.readouterr().err
    assert main(["m", "--out", str(tmp_path), "--bench", "g=/x.json", "--n", "3", "--temperature", "0"]) == 2
    assert "n: n=3 samples of greedy decoding" in capsys.readouterr().err
    assert main(["m", "--out", str(tmp_path), "--bench", "g=/x.json", "--mode", "greedy", "--temperature", "1"]) == 2
    assert "temperature: mode greedy needs temperature 0" in capsys.readouterr().err
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
                     backend="transformers", max_new_tokens=3, progress=False, python=str(other),
                     allow_row_count_mismatch=True)
    res = evaluate_model(tiny_model_dir, cfg, tmp_path / "sub", model_name="tiny")
    assert res["gsm8k"]["n"] == 2
    assert json.loads((tmp_path / "sub" / "summary.json").read_text())["config"]["python"] is None
    assert "| benchmark | n | tiny |" in (tmp_path / "sub" / "summary.md").read_text()
    assert json.loads((tmp_path / "sub" / "summary.json").read_text())["config"]["allow_row_count_mismatch"]
    with pytest.raises(ValueError, match="eval.python: /nonexistent/python does not exist"):
        evaluate_model(tiny_model_dir, EvalConfig(benchmarks=cfg.benchmarks, python="/nonexistent/python"),
                       tmp_path / "x")


def test_a_backend_returning_too_few_completions_is_an_error(tiny_model_dir, tiny_tokenizer, bench_dir, tmp_path):
    """As the reference checks vLLM's outputs: one result per prompt, n completions each, or the run fails
    (nothing is graded over a shorter denominator)."""

    class Dropping(FakeGenerator):
        def __init__(self, drop_prompt: bool):
            super().__init__(tiny_tokenizer, CANNED)
            self.drop_prompt = drop_prompt

        def generate(self, requests, sampling, *, desc=""):
            out = super().generate(requests, sampling, desc=desc)
            return out[:-1] if self.drop_prompt else [c[:-1] if i == 0 else c for i, c in enumerate(out)]

    for drop_prompt, got in ((True, "3 results for 4 prompts"), (False, "4 results for 4 prompts")):
        with pytest.raises(RuntimeError, match=f"backend fake returned {got} \\(expected 1 completions each\\)"):
            evaluate_model(tiny_model_dir, _cfg(bench_dir), tmp_path / str(drop_prompt),
                           generator=Dropping(drop_prompt))
        assert not (tmp_path / str(drop_prompt) / "summary.json").exists()
