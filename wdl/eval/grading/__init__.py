"""Grading one generation: `grade(output, gold, answer_type, choices, grader=...)` -> `Grade`.

Graders:
- `reference` (default): the reference evaluator's verdict (math-verify on the whole completion as the
  reference configures it, and its multiple-choice letter rules); the numbers comparable with the paper's.
  See `wdl.eval.grading.reference`.
- `lenient`: our own extraction (the answer after `</think>`, `<answer>` tags, the last box, "answer is",
  the last number) and numeric rules (rounding, percentages, units). See `wdl.eval.grading.lenient`.
- `external`: a pinned Python file (`wdl.eval.grading.external.ExternalGrader`), used by the runner.
"""

from __future__ import annotations

from wdl.eval.grading.lenient import AnswerType, lenient_grade
from wdl.eval.grading.reference import question_options, reference_grade
from wdl.eval.grading.verdict import GRADERS, Grade

BUILTIN_GRADERS = ("reference", "lenient")


def grade(output: str, gold: str, answer_type: AnswerType | None = None, choices: dict[str, str] | None = None,
          *, grader: str = "reference", last_number_fallback: bool = True) -> Grade:
    """Grade one model output against the gold answer.

    `grader="reference"`: the reference's verdict. It decides multiple choice from the gold alone (one letter
    A-E) and ignores `answer_type`; `choices` are the options as the reference reads them from the question
    (`question_options(question)`), used to match a boxed value to an option.
    `grader="lenient"`: `answer_type` (number | choice | math; inferred from the gold when None) picks the
    comparison; `choices` are the options of a choice problem; `last_number_fallback` lets numeric answers
    fall back to the last number of the output.
    """
    if grader == "reference":
        return reference_grade(output, gold, choices)
    if grader == "lenient":
        return lenient_grade(output, gold, answer_type, choices, last_number_fallback=last_number_fallback)
    raise ValueError(f"grader must be one of {', '.join(BUILTIN_GRADERS)}, got {grader!r} (an external grader is "
                     "wdl.eval.grading.external.ExternalGrader)")


__all__ = ["BUILTIN_GRADERS", "GRADERS", "Grade", "grade", "question_options"]
