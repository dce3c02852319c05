"""Math evaluation: benchmark loaders, chat prompts, vLLM / transformers generation, grading, reports.

    from wdl.eval import EvalConfig, BenchmarkSpec, evaluate_model, comparison_table
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k", path="data/seed_eval/gsm8k/test.json")])
    results = evaluate_model("runs/tiny/sft", cfg, Path("runs/eval/sft"))   # {"gsm8k": {"accuracy": .., "n": ..}}
    print(comparison_table({"sft": results}))

Defaults: the reference evaluator's paper protocol and its grader (`protocol: paper`, `grader: reference`);
`grader: lenient` and `protocol: opd` are options (docs/eval.md).

Heavy imports (torch, transformers, vllm, math-verify) happen only when evaluation runs.
"""

from wdl.eval.backends import Completion, Generator, Request, Sampling
from wdl.eval.config import BENCHMARKS, REFERENCE_SYSTEM_PROMPT, BenchmarkSpec, Decoding, EvalConfig
from wdl.eval.data import Problem, load_benchmark
from wdl.eval.grading import Grade, grade
from wdl.eval.metrics import pass_at_k, summarize
from wdl.eval.report import comparison_table, load_results, side_by_side_table
from wdl.eval.runner import evaluate_model

__all__ = [
    "BENCHMARKS",
    "REFERENCE_SYSTEM_PROMPT",
    "BenchmarkSpec",
    "Completion",
    "Decoding",
    "EvalConfig",
    "Generator",
    "Grade",
    "Problem",
    "Request",
    "Sampling",
    "comparison_table",
    "evaluate_model",
    "grade",
    "load_benchmark",
    "load_results",
    "pass_at_k",
    "side_by_side_table",
    "summarize",
]
