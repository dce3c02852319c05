"""The lenient grader on hand-written tricky outputs: every case states the verdict a careful human grader would
give (the reference grader's verdicts are in test_grading_reference.py)."""

from __future__ import annotations

import pytest

from wdl.eval.grading import grade as any_grade
from wdl.eval.grading.lenient import (
    answer_regions,
    anchored_answer,
    extract_choice,
    infer_answer_type,
    last_boxed,
    last_number,
    numbers_match,
    parse_choices,
    parse_number,
)


def grade(output, gold, answer_type=None, choices=None, **kw):
    return any_grade(output, gold, answer_type, choices, grader="lenient", **kw)


OPTS = {"A": "23.65", "B": "1000", "C": "35.62", "D": "2.65", "E": "1023.65"}
AQUA_Q = "Find the difference? Answer Choices: (A) 23.65 (B) 1000 (C) 35.62 (D) 2.65 (E) 1023.65"

# (model output, gold, expected correct, expected extracted or ... for "don't care")
NUMERIC = [
    # plain, float golds as the reference's files write them
    ("So he needs 576 tiles. The answer is 576.", "576.0", True, "576"),
    ("The answer is 576.0", "576", True, "576.0"),
    ("The answer is 577.", "576.0", False, "577"),
    ("Therefore the total is \\boxed{576}.", "576.0", True, "576"),
    # thousands separators, currency, units
    ("The answer is 1,000.", "1000.0", True, "1,000"),
    ("The answer is $1,000.", "1000", True, ...),
    ("The answer is \\$1{,}250.50", "1250.5", True, ...),
    ("She pays \\boxed{\\$18} in total.", "18", True, "\\$18"),
    ("The answer is 12 cm.", "12", True, "12 cm"),
    ("The answer is 45 minutes", "45", True, ...),
    ("\\boxed{12 \\text{ apples}}", "12", True, ...),
    ("\\boxed{90^\\circ}", "90", True, ...),
    # negative numbers, unicode minus
    ("The temperature is \\boxed{-3} degrees.", "-3.0", True, "-3"),
    ("The answer is −3.", "-3", True, ...),
    ("The answer is 3.", "-3", False, "3"),
    # percentages both ways
    ("The discount is \\boxed{25\\%}", "25", True, ...),
    ("The answer is 25%.", "0.25", True, ...),
    ("The answer is 25%.", "2.5", False, ...),
    # fractions and decimals, rounding to the precision the model wrote
    ("\\boxed{\\frac{11}{6}}", "1.8333333333333335", True, ...),
    ("\\boxed{\\dfrac{11}{6}}", "1.8333333333333335", True, ...),
    ("The answer is 11/6", "1.8333333333333335", True, ...),
    ("The answer is 1.83", "1.8333333333333335", True, "1.83"),
    ("The answer is 1.8333", "1.8333333333333335", True, ...),
    ("The answer is 1.8", "1.8333333333333335", False, ...),  # one decimal is not "rounded to 1.83"
    ("The answer is 2", "1.8333333333333335", False, ...),
    ("The answer is 0.63", "0.625", True, ...),
    ("\\boxed{4.67}", "\\frac{14}{3}", False, ...),  # an exact fraction gold is not met by a rounded decimal
    ("\\boxed{\\frac{28}{6}}", "\\frac{14}{3}", True, ...),
    ("The answer is 576.04", "576", False, ...),
    # an equation as the answer
    ("\\boxed{x = 7}", "7", True, ...),
    ("The answer is: 3 + 4 = 7", "7", True, ...),
    # last-number fallback (no box, no "answer is")
    ("He has 3 apples and buys 4 more, so 7 apples in all.", "7", True, "7"),
    ("He has 3 apples and buys 4 more, so 7 apples in all.", "4", False, "7"),
    # the last box wins, and nested braces are kept whole
    ("First \\boxed{5}, wait, recheck: \\boxed{6}", "6", True, "6"),
    ("\\boxed{\\frac{1}{\\sqrt{4}}}", "0.5", True, "\\frac{1}{\\sqrt{4}}"),
    # thinking: the text after </think> is graded first
    ("<think>maybe \\boxed{5}</think>\nThe answer is 6.", "6", True, "6"),
    ("<think>maybe \\boxed{5}</think>\nThe answer is 6.", "5", False, "6"),
    ("<think>I get 3+4=7 so \\boxed{7}</think>\n", "7", True, "7"),  # nothing after </think>: look inside
    # <answer> tags of the reference system prompt
    ("<think>3 + 4</think> <answer> 7 </answer>", "7", True, "7"),
    ("<think>ok</think> <answer>The answer is \\boxed{8}</answer> that was easy, 9", "8", True, "8"),
    # nothing at all
    ("I cannot solve this.", "5", False, None),
    ("", "5", False, None),
]

MATH = [
    ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}", True),
    ("\\boxed{\\frac{28}{6}}", "\\frac{14}{3}", True),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("\\boxed{(3, \\frac{\\pi}{3})}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
    ("The final answer is $\\sqrt{2}/2$.", "\\frac{\\sqrt{2}}{2}", True),
    ("\\boxed{x^{2}+\\frac{1}{2}}", "x^2 + 1/2", True),
    ("\\boxed{2x+1}", "x^2 + 1/2", False),
    ("\\boxed{[-2, 3)}", "[-2,3)", True),
    ("\\boxed{\\{1, 2, 3\\}}", "\\{3, 2, 1\\}", True),
    ("\\boxed{3\\sqrt{13}}", "3\\sqrt{13}", True),
    ("\\boxed{\\sqrt{117}}", "3\\sqrt{13}", True),
    ("\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", True),
    ("<think>\\boxed{1}</think> So \\boxed{2}", "2", True),
    ("no idea", "\\frac{14}{3}", False),
]

CHOICE = [
    ("The answer is (D).", "D", True, "D"),
    ("The answer is D.", "D", True, "D"),
    ("Answer: C", "C", True, "C"),
    ("**Answer:** (e)", "E", True, "E"),
    ("So the correct option is B because 1000 is even.", "B", True, "B"),
    ("\\boxed{C}", "C", True, "C"),
    ("\\boxed{\\text{(C)}}", "C", True, "C"),
    ("\\boxed{(C) 35.62}", "C", True, "C"),
    ("\\boxed{35.62}", "C", True, "C"),  # a value that is exactly one option
    ("The answer is 1023.65", "E", True, "E"),
    # the reference's bug: "answer is a multiple" is not choice A
    ("The answer is a multiple of 5, so it must end in 0 or 5.", "A", False, None),
    ("The answer is a multiple of 5. The answer is (B).", "B", True, "B"),
    ("the answer is a bit tricky; the final answer is (C)", "C", True, "C"),
    # the last explicit choice wins; thinking text only as a fallback
    ("<think>The answer is (A)... no.</think> The answer is (D).", "D", True, "D"),
    ("<think>so the answer is (A)</think>", "A", True, "A"),
    ("The answer is (A). Wait, I made an error. The answer is (D).", "D", True, "D"),
    ("I am not sure.", "A", False, None),
    ("\\boxed{99}", "A", False, None),  # a value that is no option
]


@pytest.mark.parametrize("output,gold,correct,extracted", NUMERIC)
def test_numeric_answers(output, gold, correct, extracted):
    g = grade(output, gold, "number")
    assert g.correct is correct, g
    if extracted is not ...:
        assert g.extracted == extracted, g


@pytest.mark.parametrize("output,gold,correct", MATH)
def test_math_answers_with_math_verify(output, gold, correct):
    assert grade(output, gold, "math").correct is correct


@pytest.mark.parametrize("output,gold,correct,letter", CHOICE)
def test_letter_choices(output, gold, correct, letter):
    g = grade(output, gold, "choice", OPTS)
    assert g.correct is correct, g
    assert g.extracted == letter, g


def test_answer_type_inference():
    assert infer_answer_type("576.0") == "number"
    assert infer_answer_type("-3") == "number"
    assert infer_answer_type("\\frac{14}{3}") == "number"
    assert infer_answer_type("\\left( 3, \\frac{\\pi}{2} \\right)") == "math"
    assert infer_answer_type("B", OPTS) == "choice"
    assert infer_answer_type("B") == "choice"
    assert infer_answer_type("x") == "math"  # a lower-case letter without options is a variable


def test_grade_infers_the_type_when_not_given():
    assert grade("The answer is 1,000", "1000.0").correct
    assert grade("The answer is (B)", "B", choices=OPTS).correct
    assert grade("\\boxed{\\frac{2}{4}}", "\\frac12").correct


def test_last_number_fallback_can_be_disabled():
    text = "He has 3 apples and buys 4 more, so 7 apples in all."
    assert grade(text, "7", "number").correct
    g = grade(text, "7", "number", last_number_fallback=False)
    assert not g.correct and g.extracted is None and g.method == "none"


def test_last_boxed_nested_and_unbalanced():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{a}{b^{2}}} c") == "\\frac{a}{b^{2}}"
    assert last_boxed("\\fbox{42}") == "42"
    assert last_boxed("\\boxed 5 is it") == "5"
    assert last_boxed("\\boxed{12") is None  # cut off mid-answer: nothing reliable
    assert last_boxed("no box here") is None


def test_anchored_answer_stops_at_the_sentence_end():
    assert anchored_answer("The answer is 3.5. Then we rest.") == "3.5"
    assert anchored_answer("The final answer is $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert anchored_answer("Answer: 12\nExplanation: ...") == "12"
    assert anchored_answer("To find the answer, add them.") is None  # "answer" without is / :


def test_last_number_ignores_digits_inside_words():
    assert last_number("x2 and 3rd and 14") == "14"
    assert last_number("it is −12.") == "-12"
    assert last_number("none") is None


def test_parse_number_forms():
    cases = {"1,000": 1000.0, "$5.50": 5.5, "-3": -3.0, "25%": 25.0, "\\frac{3}{4}": 0.75, "3/4": 0.75,
             "12 cm": 12.0, "x = 7": 7.0, "\\$1{,}250": 1250.0, "0.5": 0.5, ".5": 0.5, "approximately 8": 8.0,
             "-\\frac{1}{2}": -0.5, "(5)": 5.0}
    for text, value in cases.items():
        n = parse_number(text)
        assert n is not None and n.value == pytest.approx(value), text
    assert parse_number("25%").percent
    for text in ("1, 2, 3", "2^{10}", "\\sqrt{2}", "x+1", "three", "1,2", ""):
        assert parse_number(text) is None, text


def test_numbers_match_rules():
    n = parse_number
    assert numbers_match(n("576"), n("576.0"))
    assert numbers_match(n("1.83"), n("1.8333333333333335"))
    assert not numbers_match(n("1.84"), n("1.8333333333333335"))
    assert numbers_match(n("1.8333333"), n("1.83"))  # the gold itself rounded to 2 decimals
    assert not numbers_match(n("2"), n("1.83"))
    assert numbers_match(n("50%"), n("0.5")) and numbers_match(n("0.5"), n("50%"))


def test_parse_choices_from_the_question():
    assert parse_choices(AQUA_Q) == OPTS
    q = "x men ... Answer Choices: (A) x2/y2 units (B) y3/x2 units (C) x3/y2 units (D) y2/x2 units (E) None of these"
    assert parse_choices(q)["E"] == "None of these"
    assert parse_choices("What is 2 + 2?") == {}


def test_extract_choice_requires_capital_or_parentheses():
    assert extract_choice("the answer is a", OPTS) is None
    assert extract_choice("the answer is (a)", OPTS) == "A"
    assert extract_choice("The answer is A", OPTS) == "A"
    assert extract_choice("The answer is Adam's choice", OPTS) is None


def test_answer_regions_order():
    assert answer_regions("<think>a</think>b") == ["b", "<think>a</think>b"]
    assert answer_regions("no think") == ["no think"]
    assert answer_regions("<think>t</think> <answer>x</answer>")[0] == "x"
