"""Seeded synthetic math word problems for the embedded default (nothing is downloaded).

Each problem has a question, step-by-step reasoning and an integer answer. Rendered as a chat record the
assistant turn is `<think>\\n<steps>\\n</think>\\n\\nThe answer is \\boxed{<answer>}.`, the format of the
reference's training data (reasoning in a think block, a boxed final answer). Rendered as plain text it is
pretraining material for the tiny base. The held-out eval split is written in the GSM8K layout of the
reference's test sets (`instruction`, `input`, `output`, `answer`) so the evaluator reads it like GSM8K.

Splits are disjoint by the problem's mathematical content (kind and numbers), not just by its wording: an
eval problem never appears in training with other names or items.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from wdl.io import atomic_write_json, atomic_write_jsonl


@dataclass(frozen=True)
class WordProblem:
    kind: str
    question: str
    steps: tuple[str, ...]
    answer: int
    signature: tuple  # kind + the numbers: two problems with the same signature are the same problem

    def solution(self) -> str:
        """The assistant turn: reasoning in a think block, then the boxed answer."""
        return "<think>\n" + "\n".join(self.steps) + "\n</think>\n\n" + f"The answer is \\boxed{{{self.answer}}}."

    def text(self) -> str:
        """Plain-text rendering (no chat template, no think block) for pretraining the tiny base."""
        return f"Question: {self.question}\nSolution: " + " ".join(self.steps) + f" The answer is {self.answer}."


_NAMES = ("Tom", "Anna", "Ben", "Lisa", "Omar", "Mia", "Leo", "Sara", "Ravi", "Emma", "Jack", "Nina")
_ITEMS = ("apples", "pencils", "stickers", "marbles", "books", "cookies", "cards", "shells", "coins", "eggs")
_CONTAINERS = ("boxes", "bags", "packs", "jars", "crates")
_GOODS = (("notebook", "notebooks"), ("pen", "pens"), ("ticket", "tickets"), ("cup", "cups"), ("ball", "balls"))
_THINGS = ("shirt", "lamp", "backpack", "game", "chair", "jacket")


def _add_sub(r: random.Random) -> WordProblem:
    name, friend = r.sample(_NAMES, 2)
    item = r.choice(_ITEMS)
    a, b = r.randint(3, 30), r.randint(2, 20)
    c = r.randint(1, a + b - 1)
    s = a + b
    return WordProblem(
        "add_sub",
        f"{name} has {a} {item}. {name} gets {b} more and then gives {c} to {friend}. "
        f"How many {item} does {name} have now?",
        (f"{name} starts with {a} {item}.", f"After getting {b} more: {a} + {b} = {s}.",
         f"After giving away {c}: {s} - {c} = {s - c}."),
        s - c,
        ("add_sub", a, b, c),
    )


def _groups(r: random.Random) -> WordProblem:
    name = r.choice(_NAMES)
    item, box = r.choice(_ITEMS), r.choice(_CONTAINERS)
    n, k, a = r.randint(2, 9), r.randint(2, 12), r.randint(1, 30)
    m = n * k
    return WordProblem(
        "groups",
        f"{name} buys {n} {box} of {item} with {k} {item} in each. {name} already had {a} {item}. "
        f"How many {item} does {name} have in total?",
        (f"The {box} hold {n} * {k} = {m} {item}.", f"Adding the {a} {name} already had: {m} + {a} = {m + a}."),
        m + a,
        ("groups", n, k, a),
    )


def _unit_rate(r: random.Random) -> WordProblem:
    rate, t1, t2 = r.randint(2, 20), r.randint(2, 8), r.randint(2, 12)
    if r.random() < 0.5:
        d = rate * t1
        return WordProblem(
            "unit_rate",
            f"A car travels {d} km in {t1} hours. At the same speed, how many km does it travel in {t2} hours?",
            (f"Speed: {d} / {t1} = {rate} km per hour.", f"In {t2} hours: {rate} * {t2} = {rate * t2} km."),
            rate * t2,
            ("unit_rate_speed", rate, t1, t2),
        )
    one, many = r.choice(_GOODS)
    cost = rate * t1
    return WordProblem(
        "unit_rate",
        f"{t1} {many} cost {cost} dollars. How many dollars do {t2} {many} cost?",
        (f"One {one} costs {cost} / {t1} = {rate} dollars.", f"{t2} {many} cost {rate} * {t2} = {rate * t2} dollars."),
        rate * t2,
        ("unit_rate_price", rate, t1, t2),
    )


def _percent(r: random.Random) -> WordProblem:
    pct = r.choice((5, 10, 15, 20, 25, 30, 40, 50, 60, 75))
    unit = 100 // _gcd(pct, 100)  # the smallest base whose pct% is a whole number
    base = r.randint(1, 200 // unit) * unit
    part = base * pct // 100
    variant = r.randrange(3)
    if variant == 0:
        thing = r.choice(_THINGS)
        question = f"A {thing} costs {base} dollars. It is on sale for {pct}% off. What is the sale price in dollars?"
        steps = (f"The discount is {base} * {pct} / 100 = {part} dollars.",
                 f"The sale price is {base} - {part} = {base - part}.")
        answer = base - part
    elif variant == 1:
        thing = r.choice(_THINGS)
        question = f"A {thing} costs {base} dollars. The price goes up by {pct}%. What is the new price in dollars?"
        steps = (f"The increase is {base} * {pct} / 100 = {part} dollars.",
                 f"The new price is {base} + {part} = {base + part}.")
        answer = base + part
    else:
        item = r.choice(_ITEMS)
        question = f"There are {base} {item} in a basket and {pct}% of them are broken. How many {item} are not broken?"
        steps = (f"Broken: {base} * {pct} / 100 = {part}.", f"Not broken: {base} - {part} = {base - part}.")
        answer = base - part
    return WordProblem("percent", question, steps, answer, ("percent", variant, base, pct))


def _equation(r: random.Random) -> WordProblem:
    a, x, b = r.randint(2, 9), r.randint(1, 15), r.randint(1, 30)
    c = a * x + b
    return WordProblem(
        "equation",
        f"Solve for x: {a}x + {b} = {c}. What is x?",
        (f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}.", f"Divide by {a}: x = {c - b} / {a} = {x}."),
        x,
        ("equation", a, x, b),
    )


def _share(r: random.Random) -> WordProblem:
    name = r.choice(_NAMES)
    item = r.choice(_ITEMS)
    k, each, extra = r.randint(2, 8), r.randint(2, 15), r.randint(0, 15)
    total = k * each + extra
    steps = []
    if extra:
        steps.append(f"{name} keeps {extra}, leaving {total} - {extra} = {k * each}.")
    steps.append(f"Each friend gets {k * each} / {k} = {each}.")
    keep = f" after keeping {extra} for {'himself' if name in _HE else 'herself'}" if extra else ""
    return WordProblem(
        "share",
        f"{name} has {total} {item} and shares them equally among {k} friends{keep}. "
        f"How many {item} does each friend get?",
        tuple(steps),
        each,
        ("share", k, each, extra),
    )


_HE = {"Tom", "Ben", "Omar", "Leo", "Ravi", "Jack"}


def _gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a


GENERATORS: dict[str, Callable[[random.Random], WordProblem]] = {
    "add_sub": _add_sub,
    "groups": _groups,
    "unit_rate": _unit_rate,
    "percent": _percent,
    "equation": _equation,
    "share": _share,
}


def generate(n: int, seed: int, kinds: Sequence[str] | None = None, exclude: set | None = None) -> list[WordProblem]:
    """`n` distinct problems (by signature), kinds in turn, deterministic for the same arguments.

    A kind whose problems are used up (1000 draws in a row already taken) leaves the rotation.
    """
    kinds = list(kinds or GENERATORS)
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown:
        raise ValueError(f"kinds: unknown problem kind(s) {unknown}; choose from {sorted(GENERATORS)}")
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    r = random.Random(seed)
    seen = set(exclude or ())
    out: list[WordProblem] = []
    turn = 0
    misses = dict.fromkeys(kinds, 0)
    while len(out) < n:
        if not kinds:
            raise ValueError(f"cannot draw {n} distinct problems (got {len(out)}); ask for fewer")
        kind = kinds[turn % len(kinds)]
        p = GENERATORS[kind](r)
        if p.signature in seen:
            misses[kind] += 1
            if misses[kind] >= 1000:
                kinds.remove(kind)
            continue
        misses[kind] = 0
        seen.add(p.signature)
        out.append(p)
        turn += 1
    return out


@dataclass(frozen=True)
class Splits:
    train: list[WordProblem]
    eval: list[WordProblem]
    pretrain: list[WordProblem]


def make_splits(n_train: int, n_eval: int, n_pretrain: int, seed: int) -> Splits:
    """Three pairwise-disjoint splits (by signature). The eval split is drawn first, from its own stream,
    so it does not change when the training sizes change."""
    ev = generate(n_eval, seed=seed * 3 + 1)
    taken = {p.signature for p in ev}
    train = generate(n_train, seed=seed * 3 + 2, exclude=taken)
    taken |= {p.signature for p in train}
    pretrain = generate(n_pretrain, seed=seed * 3 + 3, exclude=taken)
    return Splits(train=train, eval=ev, pretrain=pretrain)


def chat_record(problem: WordProblem, idx: int) -> dict:
    return {
        "idx": idx,
        "messages": [
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": problem.solution()},
        ],
    }


def write_chat_jsonl(path: str | Path, problems: Sequence[WordProblem]) -> None:
    """Training records: `{"idx": i, "messages": [user, assistant]}` per line."""
    atomic_write_jsonl(path, [chat_record(p, i) for i, p in enumerate(problems)])


def write_text_jsonl(path: str | Path, problems: Sequence[WordProblem]) -> None:
    """Pretraining records: `{"idx": i, "text": ...}` per line."""
    atomic_write_jsonl(path, [{"idx": i, "text": p.text()} for i, p in enumerate(problems)])


def write_eval_json(path: str | Path, problems: Sequence[WordProblem]) -> None:
    """GSM8K layout of the reference's test sets: a JSON list of {instruction, input, output, answer}."""
    rows = [
        {"instruction": p.question, "input": "", "output": " ".join(p.steps), "answer": str(p.answer)}
        for p in problems
    ]
    atomic_write_json(path, rows)


def corpus(problems: Sequence[WordProblem]) -> list[str]:
    """Texts to build the tokenizer from: every rendering the pipeline will tokenize."""
    return [t for p in problems for t in (p.question, p.solution(), p.text())]


if __name__ == "__main__":  # a quick look: python -m wdl.synthetic
    for p in generate(len(GENERATORS), seed=0):
        print(json.dumps(chat_record(p, 0), indent=1))
