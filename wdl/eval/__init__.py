"""Math evaluation: benchmark loaders, chat prompts, vLLM / transformers generation, grading, reports.

    from wdl.eval import EvalConfig, BenchmarkSpec, evaluate_model, comparison_table
    cfg = EvalConfig(benchmarks=[BenchmarkSpec(name="gsm8k", path="data/seed_eval/gsm8k/test.json")])
    results = evaluate_model("runs/tiny/sft", cfg, Path("runs/eval/sft"))   # {"gsm8k": {"accuracy": .., "n": ..}}
    print(comparison_table({"sft": results}))

Heavy imports (torch, transformers, vllm, math-verify) happen only when evaluation runs.
"""

from wdl.eval.backends import Completion, Generator, Request, Sampling
from wdl.eval.config import BENCHMARKS, REFERENCE_SYSTEM_PROMPT, BenchmarkSpec, EvalConfig
from wdl.eval.data import Problem, load_benchmark
from wdl.eval.grading import Grade, grade
from wdl.eval.report import comparison_table, load_results, pass_at_k
from wdl.eval.runner import evaluate_model

__all__ = [
    "BENCHMARKS",
    "REFERENCE_SYSTEM_PROMPT",
    "BenchmarkSpec",
    "Completion",
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
]
