"""The embedded default's held-out synthetic set under the default grader: the answers its models are trained
to write (`The answer is \\boxed{N}.` after a think block) must be read as the reference reads them."""

from __future__ import annotations

import json

from wdl.eval import BenchmarkSpec, EvalConfig, evaluate_model
from wdl.eval.grading import grade
from wdl.synthetic import make_splits, write_eval_json

from .fakes import FakeGenerator


def test_synthetic_solutions_are_correct_and_wrong_answers_are_not(tiny_tokenizer):
    problems = make_splits(0, 60, 0, seed=0).eval
    for p in problems:
        text = p.solution()
        # as generated and decoded under the paper protocol (special tokens such as <think> dropped)
        ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tiny_tokenizer.decode(ids, skip_special_tokens=True)
        assert "<think>" not in decoded
        for t in (text, decoded):
            assert grade(t, str(p.answer)).correct, t
            assert not grade(t.replace(f"{{{p.answer}}}", f"{{{p.answer + 1}}}"), str(p.answer)).correct, t


def test_synthetic_set_through_the_evaluator(tiny_model_dir, tiny_tokenizer, tmp_path):
    """As the pipeline adds it: name "synthetic" (no standard row count), GSM8K layout."""
    problems = make_splits(0, 6, 0, seed=1).eval
    write_eval_json(tmp_path / "eval.json", problems)
    canned = {p.question: (p.solution() if i % 2 == 0 else f"The answer is {p.answer}.")
              for i, p in enumerate(problems)}
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="synthetic", path=str(tmp_path / "eval.json"), format="gsm8k")],
                     progress=False, system_prompt="none")
    res = evaluate_model(tiny_model_dir, cfg, tmp_path / "out", generator=FakeGenerator(tiny_tokenizer, canned))
    r = res["synthetic"]
    assert (r["n"], r["accuracy"], r["accuracy_lenient"]) == (6, 0.5, 1.0)  # a bare "answer is N" is not LaTeX
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["provenance"]["datasets"]["synthetic"][
        "reference_sha256"] is None
