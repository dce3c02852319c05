"""The reference evaluator's verdict, reimplemented: `verify_with_latex` of `ensemble/eval_vllm_thinking_math.py`
(chenzehao82/Weak-Driven-Learning, commit 25ac32f), the grader behind the paper's accuracy table.

It reads the whole completion, thinking included: no `</think>` split, no `<answer>` tags, no bare numbers,
no rounding.

1. A gold answer that is one letter A-E (after trimming spaces and `$`, in any case) is a multiple-choice
   gold, whatever the benchmark:
   a. the letter of the last `\\boxed{X}`; else of the last "answer X": the word "answer" in any case (even
      inside a longer word), an optional "is" or ":", an optional "(", one letter A-E in any case, an
      optional ")", then a word boundary. So "answer: e" is E and "the answer is a multiple of 4" is A, while
      "the correct option is B" and "Answer is: C" give no letter;
   b. else the last `\\boxed{...}` (at most one level of nested braces inside) is compared by math-verify
      with each option parsed from the question ("(A) 23.65 (B) 1000 ..."), in the question's order; the
      first equal option is the choice;
   c. else on to 2, with the letter as the gold.
2. math-verify: the gold parsed from `$gold$` (math-verify's default extraction, first match); the
   completion parsed with LaTeX extraction only — a `\\boxed{}` first, else a LaTeX span ($...$, \\(...\\),
   \\[...\\]) after "final answer is" or "answer", never a span without such an anchor — with equations
   normalised (`x = 7` -> 7) and units dropped; then `verify(gold, prediction)` with math-verify's
   defaults (floats equal when they agree to 6 digits).

math-verify times out (5 s) with SIGALRM, which works only in the main thread: elsewhere it runs unbounded.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache

from wdl.eval.grading.verdict import Grade, alarm_timeout

CHOICE_LETTERS = "ABCDE"
_BOXED_LETTER = re.compile(r"\\boxed\{\s*([A-E])\s*\}", re.IGNORECASE)
# no \b before "answer" and IGNORECASE on the letter: the reference's reading, quirks included
_ANSWER_LETTER = re.compile(r"answer\s*(?:is|:)?\s*\(?([A-E])\)?\b", re.IGNORECASE)
# an option's value runs to the next "(X)" or the end and cannot contain "(": "(A) (1/2)" is not an option
_OPTION = re.compile(r"\(([A-E])\)\s*([^(]+?)(?=\s*\([A-E]\)|\s*$)")
_BOXED_VALUE = re.compile(r"\\boxed\{([^{}]+(?:\{[^{}]*\}[^{}]*)*)\}")
MATH_VERIFY_TIMEOUT = 5  # seconds, math-verify's default for parse and for verify


def choice_letter(text: str) -> str | None:
    """The letter the reference reads from a completion (rule 1a), upper case, or None."""
    for pattern in (_BOXED_LETTER, _ANSWER_LETTER):
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def question_options(question: str) -> dict[str, str]:
    """The options the reference parses from a question: {"A": "23.65", ...} in the question's order (a
    repeated letter keeps its first place and its last value); {} when there are none."""
    return {letter: value.strip().rstrip(".") for letter, value in _OPTION.findall(question)}


def last_boxed_value(text: str) -> str | None:
    found = _BOXED_VALUE.findall(text)
    return found[-1].strip() if found else None


def is_choice_gold(gold: str) -> str | None:
    """The gold letter when the reference treats `gold` as a multiple-choice answer, else None."""
    g = gold.strip().strip("$").upper()
    return g if len(g) == 1 and g in CHOICE_LETTERS else None


# ------------------------------------------------------------------------------------------- math-verify
@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import parse

    return parse(f"${gold.strip().strip('$')}$", extraction_mode="first_match",
                 parsing_timeout=alarm_timeout(MATH_VERIFY_TIMEOUT))


class _QuietEquationsWarning(logging.Filter):
    # latex2sympy2_extended >= 1.11 logs a deprecation warning on every parse with equations=True (which it
    # still applies); the reference sets it, so it would flood the log once per graded completion
    def filter(self, record: logging.LogRecord) -> bool:
        return "equations=True in NormalizationConfig is deprecated" not in record.getMessage()


@lru_cache(maxsize=1)
def _prediction_config():
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig

    logging.getLogger("latex2sympy2_extended.math_normalization").addFilter(_QuietEquationsWarning())

    norm = NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True, equations=True,
                               boxed="all", units=True)
    return [LatexExtractionConfig(normalization_config=norm, boxed_match_priority=0,
                                  try_extract_without_anchor=False)]


def math_verify_verdict(prediction: str, gold: str) -> tuple[bool | None, str | None]:
    """(verdict, extracted) of rule 2: verdict None when the gold itself does not parse; `extracted` is the
    LaTeX string math-verify read from the prediction (None: it found nothing)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return None, None
    # The reference passes extraction_mode="all"; math-verify tests only for "first_match", so any other
    # value is its "any_match" (tests/eval/test_grading_reference.py checks that this still holds).
    pred_parsed = parse(prediction, _prediction_config(), extraction_mode="any_match",
                        parsing_timeout=alarm_timeout(MATH_VERIFY_TIMEOUT))
    strings = [p for p in pred_parsed if isinstance(p, str)]
    extracted = strings[-1] if strings else (str(pred_parsed[0]) if pred_parsed else None)
    ok = verify(gold_parsed, pred_parsed, timeout_seconds=alarm_timeout(MATH_VERIFY_TIMEOUT))
    return bool(ok), extracted


def _option_of_boxed(output: str, options: dict[str, str]) -> str | None:
    """Rule 1b: the first option equal to the last boxed value."""
    value = last_boxed_value(output)
    if not options or not value:
        return None
    for letter, option in options.items():
        try:
            same = bool(math_verify_verdict(f"\\boxed{{{value}}}", option)[0])
        except Exception:  # math-verify failed on this pair: the reference compares the strings then
            same = value == option
        if same:
            return letter
    return None


def reference_grade(output: str, gold: str, options: dict[str, str] | None = None) -> Grade:
    """The reference's verdict on one completion. `options`: the multiple-choice options as the reference
    reads them from the question (`question_options`); only used when the gold is a letter."""
    letter_gold = is_choice_gold(gold)
    if letter_gold is not None:
        letter = choice_letter(output)
        if letter is not None:
            return Grade(letter, letter == letter_gold, "choice")
        letter = _option_of_boxed(output, options or {})
        if letter is not None:
            return Grade(letter, letter == letter_gold, "choice_value")
    try:
        verdict, extracted = math_verify_verdict(output, gold)
    except Exception as e:  # the reference counts a failed verification as wrong
        return Grade(None, False, "error", f"{type(e).__name__}: {e}")
    if verdict is None:
        return Grade(None, False, "error", f"math-verify cannot parse the gold answer {gold!r}")
    return Grade(extracted, verdict, "math_verify" if extracted is not None else "none")
