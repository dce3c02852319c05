"""The OPD protocol's locked contract, as the reference evaluator enforces it (its `--protocol opd`).

The reference used it for recent Qwen3 OPD checkpoint runs on MATH500, AIME 2025 and AMC23: a user-only
thinking prompt, fixed length budgets, Qwen's two end tokens as stops, special tokens kept in the text,
remote code trusted, bfloat16, one GPU, seed 42, and an external grader pinned by SHA-256. Anything else is
refused (`check_opd`), so an OPD number is always produced under the same settings; the paper protocol has
no such lock.
"""

from __future__ import annotations

import os

from wdl.eval.config import BenchmarkSpec, EvalConfig

QWEN_STOP_TOKENS = {151643: "<|endoftext|>", 151645: "<|im_end|>"}
# ttrl_math/__init__.py of THUNLP/OPD at commit 4532fd3, the scorer the reference pins
OPD_GRADER_SHA256 = "6e7f8ea703258c051e4c28379443416a485046c235196f4ee25a244c216e994c"
OPD_RUNTIME_ENV = {"VLLM_USE_DEEP_GEMM": "0", "VLLM_DEEP_GEMM_WARMUP": "skip", "TOKENIZERS_PARALLELISM": "false"}
# mode -> the temperatures and sample count the contract allows
OPD_MODES = {"greedy": ({0.0}, 1), "pass1": ({0.1, 0.5}, 1), "passk": ({0.5}, 8)}


def opd_stop_token_ids(cfg: EvalConfig) -> list[int]:
    return list(QWEN_STOP_TOKENS) if cfg.stop_token_ids is None else list(cfg.stop_token_ids)


def grader_sha256(cfg: EvalConfig) -> str | None:
    """The SHA-256 an external grader must have: the configured one, else (opd) the reference's pin."""
    if cfg.grader_sha256:
        return cfg.grader_sha256.lower()
    return OPD_GRADER_SHA256 if cfg.protocol == "opd" else None


def check_opd(cfg: EvalConfig, spec: BenchmarkSpec) -> None:
    """ValueError listing every setting of `spec`'s run that leaves the OPD contract."""
    info = spec.info
    off: dict[str, object] = {}
    if info is None or info.opd_lengths is None:
        off["benchmark"] = f"{spec.name} (the opd protocol covers math500, aime2025, amc23)"
    elif cfg.lengths(spec) != info.opd_lengths:
        off["lengths (input, new, context)"] = f"{cfg.lengths(spec)}, the contract's are {info.opd_lengths}"
    d = cfg.decoding
    temperatures, n = OPD_MODES[d.mode]
    if d.temperature not in temperatures:
        off["temperature"] = f"{d.temperature} (mode {d.mode} allows {sorted(temperatures)})"
    if d.n != n:
        off["n"] = f"{d.n} (mode {d.mode} takes {n})"
    expected = {"top_p": 1.0, "seed": 42, "tensor_parallel_size": 1, "top_k": -1, "repetition_penalty": 1.0}
    off.update({k: getattr(cfg, k) for k, v in expected.items() if getattr(cfg, k) != v})
    if cfg.engine_dtype("vllm") != "bfloat16":
        off["dtype"] = cfg.dtype
    if opd_stop_token_ids(cfg) != list(QWEN_STOP_TOKENS):
        off["stop_token_ids"] = cfg.stop_token_ids
    if cfg.stop_tokens:
        off["stop_tokens"] = cfg.stop_tokens
    if cfg.skip_special_tokens is True:
        off["skip_special_tokens"] = True
    if cfg.trust_remote_code is False:
        off["trust_remote_code"] = False
    if cfg.truncation not in (None, "error"):
        off["truncation"] = cfg.truncation
    if off:
        details = "; ".join(f"{k}: {v}" for k, v in off.items())
        raise ValueError(f"benchmark {spec.name}: the opd protocol's decoding contract is locked, and this run "
                         f"departs from it ({details}); drop those settings, or use protocol: paper")


def check_opd_stop_tokens(tokenizer, ids: list[int]) -> None:
    """The tokenizer must map the contract's stop ids to Qwen's end tokens (a Qwen3 vocabulary)."""
    actual = {i: tokenizer.convert_ids_to_tokens(i) for i in ids}
    if actual != QWEN_STOP_TOKENS:
        raise ValueError(f"the opd protocol stops at {QWEN_STOP_TOKENS}, but this tokenizer has {actual}; the opd "
                         "protocol is for Qwen3 checkpoints (use protocol: paper for others)")


def lock_runtime_environment(cfg: EvalConfig) -> dict[str, str]:
    """Set the opd protocol's environment variables (before vLLM is imported); a conflicting value already
    set is an error. Returns the locked variables ({} under the paper protocol)."""
    if cfg.protocol != "opd":
        return {}
    for name, value in OPD_RUNTIME_ENV.items():
        existing = os.environ.get(name)
        if existing is not None and existing.lower() != value.lower():
            raise ValueError(f"the opd protocol runs with {name}={value}, but the environment has {name}={existing}; "
                             f"unset it")
        os.environ[name] = value
    return dict(OPD_RUNTIME_ENV)
