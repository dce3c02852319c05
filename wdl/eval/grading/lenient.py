"""The lenient grader (`eval.grader: lenient`): our own answer extraction and numeric rules, with math-verify
for everything that is not a plain number or a letter. More forgiving than the reference grader; its numbers
are not comparable with the paper's.

`lenient_grade(output, gold, answer_type, choices)` decides one generation. The order of evidence:
1. where to look: the text after the last `</think>` first (the answer proper), then the whole output (an
   answer written only inside the thinking); inside either, the last `<answer>...</answer>` block when there
   is one (the reference system prompt asks for those tags);
2. what to take: the last `\\boxed{...}` (nested braces balanced), else the last "the (final) answer is X" /
   "Answer: X", else — for numeric answers — the last number;
3. how to compare: letter choices by letter (or by value against the options), plain numbers numerically
   (commas, units, currency, percentages, fractions, rounding to the precision the model wrote), anything
   else with math-verify (LaTeX, fractions, intervals, sets, equations).

The reference grader reads "the answer is a multiple of 4" as choice A (case-insensitive letter match); here a
bare letter must be upper case, and a lower-case one counts only in parentheses or a box.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from wdl.eval.grading.verdict import Grade, alarm_timeout

AnswerType = Literal["number", "choice", "math"]
THINK_END = "</think>"
CHOICE_LETTERS = "ABCDE"


# ------------------------------------------------------------------------------------------- regions
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)


def answer_regions(text: str) -> list[str]:
    """Where to look for the final answer, most specific first (see the module docstring)."""
    regions = []
    if THINK_END in text:
        regions.append(text.rsplit(THINK_END, 1)[1])
    regions.append(text)
    out = []
    for r in regions:
        tags = _ANSWER_TAG.findall(r)
        if tags and tags[-1].strip():
            out.append(tags[-1])
        out.append(r)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------- extraction
_BOX = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (braces balanced), or of `\\boxed 5`; None if none."""
    found = None
    for m in _BOX.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth == 0:
                found = text[i + 1 : j]
        elif m.group(0).endswith((" ", "\t")):  # `\boxed 5`
            tok = re.match(r"[^\s$]+", text[i:])
            if tok:
                found = tok.group(0)
    return found.strip() if found is not None else None


# "The final answer is X", "the answer is: X", "Answer: X", "**Answer:** X", "answer = X"
_ANCHOR = re.compile(r"(?i:\b(?:final\s+answer|answer))(?:\s*\*\*)?\s*(?:is\s*:?|:|=)(?:\s*\*\*)?[ \t]*")


def _clip_sentence(s: str) -> str:
    s = s.split("\n", 1)[0]
    m = re.search(r"\.(?:\s|$)(?![^$]*\$(?:\s|$|[.,]))", s)  # a full stop outside $...$
    if m:
        s = s[: m.start()]
    s = s.strip().strip("*").strip()
    s = re.sub(r"^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    if s.startswith("$") and s.endswith("$") and len(s) > 1:
        s = s.strip("$").strip()
    return s.rstrip(".").strip()


def anchored_answer(text: str) -> str | None:
    """What follows the last "answer is" / "Answer:" (to the end of that sentence), or None."""
    last = None
    for m in _ANCHOR.finditer(text):
        value = _clip_sentence(text[m.end() :])
        if value:
            last = value
    return last


_NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])|(?<![\w.])[-−]?\.\d+(?!\w)")


def last_number(text: str) -> str | None:
    nums = _NUMBER.findall(text)
    return nums[-1].replace("−", "-") if nums else None


def extract_answer(text: str, *, allow_last_number: bool = False) -> tuple[str | None, str]:
    """(answer string, where it came from: boxed | anchor | last_number | none) for one region."""
    boxed = last_boxed(text)
    if boxed:
        return boxed, "boxed"
    anchored = anchored_answer(text)
    if anchored:
        return anchored, "anchor"
    if allow_last_number:
        n = last_number(text)
        if n is not None:
            return n, "last_number"
    return None, "none"


# ------------------------------------------------------------------------------------------- numbers
@dataclass(frozen=True)
class Number:
    value: float
    decimals: int  # digits after the point as written, trailing zeros dropped ("576.0" -> 0, "1.50" -> 1);
    # 0 for fractions (exact values)
    percent: bool


_LATEX_NOISE = [
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname|mbox)\s*\{([^{}]*)\}"), r" \1 "),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\\left|\\right|\\displaystyle|\\!|\\,|\\;|\\:|\\ |~"), ""),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\^\s*\{?\\circ\}?|°"), ""),
    (re.compile(r"\\\$|\$|\\euro|€|£|¥|₹"), ""),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"−|–"), "-"),
]
_UNIT_WORDS = r"[A-Za-z][A-Za-z.'/ ]*"
_SIMPLE = re.compile(
    r"^(?:" + _UNIT_WORDS + r"\s)?\s*"  # "approximately 5", "Rs. 50"
    r"(?P<sign>-)?\s*(?:"
    r"\\frac\{(?P<fn>\d+(?:\.\d+)?)\}\{(?P<fd>\d+(?:\.\d+)?)\}"
    r"|(?P<sn>\d+(?:\.\d+)?)\s*/\s*(?P<sd>\d+(?:\.\d+)?)"
    r"|(?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+)"
    r")\s*(?P<pct>%|percent\b|per\s*cent\b)?\s*(?:" + _UNIT_WORDS + r")?[.\s]*$",
    re.I,
)


def parse_number(text: str) -> Number | None:
    """A plain number as people write it ("1,000", "$5.50", "-3", "25%", "\\frac{3}{4}", "3/4", "12 cm",
    "x = 7"), or None when the string is not a single number (expressions, lists, words)."""
    s = str(text).strip()
    for pat, rep in _LATEX_NOISE:
        s = pat.sub(rep, s)
    if "=" in s:
        s = s.rsplit("=", 1)[1]
    s = s.strip().strip("()").strip()
    m = _SIMPLE.match(s)
    if not m:
        return None
    sign = -1.0 if m.group("sign") else 1.0
    pct = m.group("pct") is not None
    if m.group("fn") is not None or m.group("sn") is not None:
        a, b = (m.group("fn"), m.group("fd")) if m.group("fn") is not None else (m.group("sn"), m.group("sd"))
        if float(b) == 0:
            return None
        return Number(sign * float(a) / float(b), 0, pct)  # exact: a fraction is never a rounded value
    raw = m.group("num").replace(",", "")
    frac = raw.split(".", 1)[1].rstrip("0") if "." in raw else ""
    return Number(sign * float(raw), len(frac), pct)


def numbers_match(pred: Number, gold: Number) -> bool:
    """Equal up to float noise, or equal once the more precise of the two is rounded to the other's
    precision when that is at least two decimals ("1.83" for 1.8333..., never "2" for 1.83); a percentage
    also matches its fraction (25% ~ 25 ~ 0.25)."""
    preds = {pred.value} | ({pred.value / 100} if pred.percent else set())
    golds = {gold.value} | ({gold.value / 100} if gold.percent else set())
    if pred.percent and not gold.percent:
        golds.add(gold.value * 100)  # gold 0.25, prediction 25%
    d = min(pred.decimals, gold.decimals)
    for p in preds:
        for g in golds:
            if math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9):
                return True
            if 2 <= d <= 12 and abs(p - g) <= 0.5 * 10.0**-d * (1 + 1e-9) + 1e-12:
                return True
    return False


# ------------------------------------------------------------------------------------------- math-verify
@lru_cache(maxsize=4096)
def _parse_gold(gold: str):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    g = gold.strip()
    if not (g.startswith("$") or g.startswith("\\(") or g.startswith("\\[")):
        g = f"${g}$"
    return parse(g, [LatexExtractionConfig(), ExprExtractionConfig()], parsing_timeout=alarm_timeout(5))


def _pred_configs(anchored_only: bool):
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    norm = NormalizationConfig(nits=False, malformed_operators=False, basic_latex=True,
                               boxed="all", units=True)
    return [LatexExtractionConfig(normalization_config=norm, boxed_match_priority=0,
                                  try_extract_without_anchor=not anchored_only),
            ExprExtractionConfig(try_extract_without_anchor=not anchored_only)]


def math_verify_equal(pred: str, gold: str, *, raw_text: bool = False) -> bool:
    """math-verify's verdict for an extracted answer string (wrapped as `\\boxed{...}`), or, with raw_text,
    for a whole passage (its own anchored extraction, as the reference grader ran it)."""
    from math_verify import parse, verify

    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return False
    text = pred if raw_text else f"\\boxed{{{pred}}}"
    try:
        pred_parsed = parse(text, _pred_configs(anchored_only=raw_text), parsing_timeout=alarm_timeout(5))
        return bool(pred_parsed) and bool(verify(gold_parsed, pred_parsed, timeout_seconds=alarm_timeout(5)))
    except Exception:  # math-verify raises on pathological inputs (recursion, sympy errors): not a match
        return False


# ------------------------------------------------------------------------------------------- choices
_CHOICES = re.compile(r"\(([A-E])\)\s*(.*?)(?=\s*\([A-E]\)|\s*$)", re.S)


def parse_choices(question: str) -> dict[str, str]:
    """AQuA's "Answer Choices: (A) 23.65 (B) 1000 ..." -> {"A": "23.65", "B": "1000", ...} ({} if none)."""
    tail = re.split(r"(?i)answer\s+choices?\s*:", question)
    text = tail[-1] if len(tail) > 1 else question
    found = {k: v.strip().rstrip(".").strip() for k, v in _CHOICES.findall(text)}
    return found if len(found) >= 2 else {}


_LETTER_ONLY = re.compile(r"^\(?\s*([A-Ea-e])\s*\)?[.:]?$")
_LETTER_LEAD = re.compile(r"^\(([A-Ea-e])\)|^([A-E])(?:[):.]|\s+[-–:]|\s*$)")
_CHOICE_ANCHOR = re.compile(
    r"(?i:\b(?:final\s+answer|answer|correct\s+(?:option|choice)|option|choice))(?:\s*\*\*)?\s*(?:is|:)?\s*:?"
    r"(?:\s*\*\*)?\s*(?i:(?:option|choice)\s+)?(?:\(([A-Ea-e])\)|\b([A-E])(?![\w']))"
)


def _letter_of(value: str) -> str | None:
    v = re.sub(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", value).strip().strip("$").strip()
    m = _LETTER_ONLY.match(v)
    if m:
        return m.group(1).upper()
    m = _LETTER_LEAD.match(v)
    if m:
        return (m.group(1) or m.group(2)).upper()
    return None


def _choice_by_value(value: str, choices: dict[str, str]) -> str | None:
    """The one option whose value equals `value` (numerically or by math-verify), else None."""
    hits = []
    pv = parse_number(value)
    for letter, option in choices.items():
        ov = parse_number(option)
        if pv is not None and ov is not None:
            same = numbers_match(pv, ov)
        else:
            same = value.strip().lower() == option.strip().lower() or math_verify_equal(value, option)
        if same:
            hits.append(letter)
    return hits[0] if len(hits) == 1 else None


def extract_choice(text: str, choices: dict[str, str] | None = None) -> str | None:
    """The chosen letter in one region: a boxed letter (or a boxed value that is exactly one option's), else
    the last "answer is (C)" / "Answer: C" (a bare letter must be upper case), else an anchored value that is
    one option's value."""
    boxed = last_boxed(text)
    if boxed:
        letter = _letter_of(boxed)
        if letter:
            return letter
        if choices:
            letter = _choice_by_value(boxed, choices)
            if letter:
                return letter
    letter = None
    for m in _CHOICE_ANCHOR.finditer(text):
        letter = (m.group(1) or m.group(2)).upper()
    if letter:
        return letter
    if choices:
        anchored = anchored_answer(text)
        if anchored:
            return _choice_by_value(anchored, choices)
    return None


# ------------------------------------------------------------------------------------------- grading
def infer_answer_type(gold: str, choices: dict[str, str] | None = None) -> AnswerType:
    g = gold.strip().strip("()").strip()
    if len(g) == 1 and g.upper() in CHOICE_LETTERS and (choices or g.isupper()):
        return "choice"
    return "number" if parse_number(gold) is not None else "math"


def lenient_grade(
    output: str,
    gold: str,
    answer_type: AnswerType | None = None,
    choices: dict[str, str] | None = None,
    *,
    last_number_fallback: bool = True,
) -> Grade:
    """Grade one model output against the gold answer (see the module docstring for the rules); the methods
    are choice, number, math_verify and none."""
    answer_type = answer_type or infer_answer_type(gold, choices)
    regions = answer_regions(output)
    if answer_type == "choice":
        want = gold.strip().strip("()").strip().upper()
        for region in regions:
            letter = extract_choice(region, choices)
            if letter:
                return Grade(letter, letter == want, "choice")
        return Grade(None, False, "none")

    extracted = None
    for region in regions:
        extracted, _ = extract_answer(region, allow_last_number=answer_type == "number" and last_number_fallback)
        if extracted is not None:
            break
    if extracted is None:
        # nothing we could read: let math-verify try its own anchored extraction on the answer region
        if answer_type == "math" and math_verify_equal(regions[0], gold, raw_text=True):
            return Grade(None, True, "math_verify")
        return Grade(None, False, "none")
    if answer_type == "number":
        gv, pv = parse_number(gold), parse_number(extracted)
        if gv is not None and pv is not None:
            return Grade(extracted, numbers_match(pv, gv), "number")
    return Grade(extracted, math_verify_equal(extracted, gold), "math_verify")
