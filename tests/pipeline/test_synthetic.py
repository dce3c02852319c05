"""The synthetic math generator: correct answers, disjoint splits, determinism, file formats."""

from __future__ import annotations

import json
import re

import pytest

from wdl.synthetic import GENERATORS, chat_record, generate, make_splits, write_chat_jsonl, write_eval_json


def _check_arithmetic(text: str) -> int:
    """Every `a op b = c` in the reasoning is right; returns how many were checked."""
    n = 0
    for expr, c in re.findall(r"((?:\d+ [-+*/] )+\d+) = (\d+)", text):
        assert eval(expr) == int(c), text  # expr is digits and operators only (matched above)
        n += 1
    return n


def test_every_kind_is_correct_and_ends_in_boxed_answer():
    problems = generate(600, seed=3)
    assert {p.kind for p in problems} == set(GENERATORS)
    for p in problems:
        sol = p.solution()
        assert sol.startswith("<think>\n") and "\n</think>\n\n" in sol
        assert sol.endswith(f"The answer is \\boxed{{{p.answer}}}.")
        assert _check_arithmetic(sol) >= 1
        # the final step's result is the answer
        assert re.findall(r"= (\d+)", p.steps[-1])[-1] == str(p.answer)
        assert p.answer >= 0


def test_equation_solution_solves_it():
    for p in generate(50, seed=1, kinds=["equation"]):
        a, b, c = map(int, re.match(r"Solve for x: (\d+)x \+ (\d+) = (\d+)", p.question).groups())
        assert a * p.answer + b == c


def test_deterministic_and_seed_sensitive():
    assert generate(50, seed=7) == generate(50, seed=7)
    assert generate(50, seed=7) != generate(50, seed=8)


def test_splits_disjoint_and_eval_stable():
    s = make_splits(300, 60, 200, seed=0)
    assert (len(s.train), len(s.eval), len(s.pretrain)) == (300, 60, 200)
    sig = [{p.signature for p in x} for x in (s.train, s.eval, s.pretrain)]
    assert not (sig[0] & sig[1]) and not (sig[0] & sig[2]) and not (sig[1] & sig[2])
    assert len(sig[0]) == 300  # no duplicates inside a split either
    assert not {p.question for p in s.train} & {p.question for p in s.eval}
    # the eval split does not depend on the training sizes
    assert make_splits(50, 60, 10, seed=0).eval == s.eval


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown problem kind"):
        generate(3, seed=0, kinds=["calculus"])
    with pytest.raises(ValueError, match="cannot draw"):
        generate(10_000, seed=0, kinds=["share"])


def test_file_formats(tmp_path):
    s = make_splits(5, 3, 0, seed=0)
    write_chat_jsonl(tmp_path / "train.jsonl", s.train)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["idx"] for r in rows] == list(range(5))
    assert rows[0] == chat_record(s.train[0], 0)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]
    write_eval_json(tmp_path / "eval.json", s.eval)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert [set(r) for r in ev] == [{"instruction", "input", "output", "answer"}] * 3
    assert ev[0]["answer"] == str(s.eval[0].answer) and ev[0]["instruction"] == s.eval[0].question


def test_chat_template_renders_think_block(tiny_tokenizer):
    p = generate(1, seed=0)[0]
    text = tiny_tokenizer.apply_chat_template(chat_record(p, 0)["messages"], tokenize=False)
    assert "<|im_start|>assistant\n<think>\n" in text and "\\boxed{" in text
