"""Benchmark loaders: files (JSON list, JSONL, parquet) or Hugging Face datasets -> `Problem`s.

Formats (see `BenchmarkSpec`): `lookup` (the default: the reference evaluator's reading of any record, by
the first present of its field lists, `reward_model.ground_truth`, chat-message prompts), `qa` (AIME 2025 /
AMC23: question|instruction, answer), `alpaca` (GSM8K / SVAMP / AQuA / MAWPS as the reference ships them:
instruction, input, output, answer; the question is the instruction plus a non-empty input), `math500`
(problem, answer, unique_id), `fields` (a field mapping). A record that lacks a field, or has an empty
question or answer, is an error naming the file and the record: nothing is dropped silently from the
denominator. A standard set whose file has another row count than the full set is an error too (unless
`eval.allow_row_count_mismatch`), and so is a file whose SHA-256 differs from a pinned `sha256`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdl.eval.config import BenchmarkSpec, EvalConfig
from wdl.eval.grading.lenient import CHOICE_LETTERS, infer_answer_type, parse_choices
from wdl.eval.provenance import sha256_file

log = logging.getLogger("wdl.eval")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
# the reference's field lists, first present wins
QUESTION_FIELDS = ("question", "instruction", "problem", "input", "original_text", "prompt")
ANSWER_FIELDS = ("answer", "target", "label", "solution", "output", "ans")


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str  # as the file has it (trimmed; a float answer as Python prints it: 576.0)
    answer_type: str  # number | choice | math (what the lenient grader compares)
    choices: dict[str, str] = field(default_factory=dict)  # letter -> option text (choice problems)
    position: int = 0  # the record's index in the file


# ------------------------------------------------------------------------------------------- raw records
def data_file(path: str | Path) -> Path:
    """The data file a benchmark path names: the file itself, or the one a folder holds."""
    path = Path(path)
    return _data_file_in(path) if path.is_dir() else path


def read_records(path: str | Path) -> list[tuple[str, dict]]:
    """[(where, record)] from a .json (a list, or {"data": [...]}), .jsonl or .parquet file, or from a folder
    holding test.jsonl / test.json / test.parquet (or a single data file). `where` names the record for
    error messages ("gsm8k/test.json: record 12", "math500.jsonl: line 7")."""
    path = data_file(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such benchmark file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                rows.append((f"{path}: line {lineno}", rec))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                             "a benchmark file is a JSON list of records (or .jsonl, one record per line)") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}}), "
                             f"got {type(data).__name__}")
        rows = [(f"{path}: record {i + 1} of {len(data)}", rec) for i, rec in enumerate(data)]
    elif suffix == ".parquet":
        rows = [(f"{path}: row {i + 1}", rec) for i, rec in enumerate(_load_hf("parquet", data_files=str(path),
                                                                                 split="train"))]
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use {', '.join(DATA_SUFFIXES)}")
    for where, rec in rows:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object (record), got {type(rec).__name__}")
    if not rows:
        raise ValueError(f"{path}: the benchmark file has no records")
    return rows


def _data_file_in(folder: Path) -> Path:
    for name in ("test.jsonl", "test.json", "test.parquet"):
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
    if len(files) == 1:
        return files[0]
    raise ValueError(f"{folder}: expected test.jsonl, test.json or test.parquet (or a single data file) in this "
                     f"folder, found {[p.name for p in files] or 'none'}; pass the file itself as the path")


def _load_hf(name: str, **kwargs) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ValueError(f"loading {name!r} needs the `datasets` package (pip install datasets), or pass a local "
                         "JSON/JSONL file as the benchmark path") from None
    return [dict(r) for r in datasets.load_dataset(name, **kwargs)]


# ------------------------------------------------------------------------------------------- formats
def _first(rec: dict, keys: tuple[str, ...]) -> Any:
    for k in keys:
        v = rec.get(k)
        if v is not None and not (isinstance(v, str) and not v.strip()):
            return v
    return None


def _mapping(v: Any) -> dict | None:
    """A dict, or a JSON object in a string (parquet exports keep nested fields as JSON text), else None."""
    if isinstance(v, dict):
        return v
    if isinstance(v, str):
        try:
            decoded = json.loads(v)
        except json.JSONDecodeError:
            return None
        return decoded if isinstance(decoded, dict) else None
    return None


def prompt_text(value: Any, *, user_only: bool = False) -> str:
    """A question as text: a string as it is, or the one user message of a chat-message list (also as JSON
    text). `user_only`: the list must be exactly one user message (the opd protocol's rule)."""
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        value = value.tolist()
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if not isinstance(decoded, (list, dict)):
            return value
        value = decoded
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"the question must be a string or a list of chat messages, got {type(value).__name__}")
    roles, users = [], []
    for message in value:
        m = _mapping(message)
        if m is None or not isinstance(m.get("content"), str):
            raise ValueError("the prompt holds a message that is not {role, content: string}")
        roles.append(str(m.get("role", "user")))
        if roles[-1] == "user":
            users.append(m["content"])
    if user_only and roles != ["user"]:
        raise ValueError(f"the opd protocol needs a prompt of exactly one user message, got roles {roles}")
    if len(users) != 1:
        raise ValueError(f"the prompt must hold exactly one user message, got roles {roles}")
    return users[0]


def _lookup(rec: dict, opd: bool) -> tuple[Any, Any, list[str]]:
    """(question, answer, missing) by the reference's rules: `prompt` first when the record has a
    reward_model (or under opd), else the question lists; `reward_model.ground_truth`, else the answer list."""
    reward = _mapping(rec.get("reward_model"))
    if rec.get("prompt") is not None and (opd or reward is not None):
        question = rec["prompt"]
    else:
        question = _first(rec, QUESTION_FIELDS)
    answer = reward.get("ground_truth") if reward is not None else None
    if answer is None:
        answer = _first(rec, ANSWER_FIELDS)
    missing = [f"question (none of {', '.join(QUESTION_FIELDS)} has a value)" if question is None else "",
               f"answer (none of reward_model.ground_truth, {', '.join(ANSWER_FIELDS)} has a value)"
               if answer is None else ""]
    return question, answer, [m for m in missing if m]


def _as_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(v)  # "2.0", as the reference's files write numeric answers
    return str(v).strip()


def _parse_choice_list(v: Any) -> dict[str, str]:
    """["A)21", "B)21.5", ...] or {"A": "21", ...} -> {"A": "21", ...}."""
    if isinstance(v, dict):
        return {str(k).strip().upper(): _as_text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        out = {}
        for i, item in enumerate(v):
            s = str(item).strip()
            if len(s) >= 2 and s[0].upper() in CHOICE_LETTERS and s[1] in ")].:":
                out[s[0].upper()] = s[2:].strip()
            elif i < len(CHOICE_LETTERS):
                out[CHOICE_LETTERS[i]] = s
        return out
    raise ValueError(f"choices must be a list or a mapping, got {type(v).__name__}")


def to_problem(where: str, rec: dict, index: int, spec: BenchmarkSpec, fmt: str, *, opd: bool = False) -> Problem:
    """One raw record -> Problem, per the format; ValueError naming `where` for anything missing."""
    f = spec.fields
    raw_id = None
    if fmt == "lookup":
        question, answer, missing = _lookup(rec, opd)
        raw_id = rec.get("unique_id", rec.get("id"))
    elif fmt == "fields":
        q_key, a_key = f["question"], f["answer"]
        question, answer = rec.get(q_key), rec.get(a_key)
        if f.get("input") and str(rec.get(f["input"]) or "").strip():
            question = f"{question}\n\n{rec[f['input']]}"
        missing = [k for k, v in ((q_key, question), (a_key, answer)) if v is None]
        raw_id = rec.get(f["id"]) if "id" in f else None
    elif fmt == "math500":
        question, answer = rec.get("problem"), rec.get("answer")
        missing = [k for k, v in (("problem", question), ("answer", answer)) if v is None]
        raw_id = _first(rec, ("unique_id", "id"))
    elif fmt == "alpaca":
        question, answer = rec.get("instruction"), rec.get("answer")
        missing = [k for k, v in (("instruction", question), ("answer", answer)) if v is None]
        extra = rec.get("input")
        if question is not None and isinstance(extra, str) and extra.strip():
            question = f"{question}\n\n{extra}"
        raw_id = _first(rec, ("id", "idx"))
    elif fmt == "qa":
        question, answer = _first(rec, ("question", "instruction")), rec.get("answer")
        missing = [k for k, v in (("question|instruction", question), ("answer", answer)) if v is None]
        raw_id = _first(rec, ("id", "idx", "unique_id"))
    else:
        raise AssertionError(fmt)
    if missing and fmt == "lookup":
        raise ValueError(f"{where}: no {' and no '.join(missing)}; the record has {sorted(rec)} (name its fields "
                         "with format: fields, fields: {question: <key>, answer: <key>})")
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)} "
                         f"(format {fmt!r}; the record has {sorted(rec)})")
    try:
        question = prompt_text(question, user_only=opd) if fmt == "lookup" else question
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if not isinstance(question, str):
        raise ValueError(f"{where}: the question must be a string, got {type(question).__name__}")
    question, answer = question.strip(), _as_text(answer)
    if not question:
        raise ValueError(f"{where}: empty question")
    if not answer:
        raise ValueError(f"{where}: empty answer")
    choices: dict[str, str] = {}
    if "choices" in f and rec.get(f["choices"]) is not None:
        try:
            choices = _parse_choice_list(rec[f["choices"]])
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    elif "options" in rec and fmt != "fields":
        choices = _parse_choice_list(rec["options"])
    else:
        choices = parse_choices(question)
    answer_type = spec.answer_type
    if answer_type == "auto":
        info = spec.info
        answer_type = info.answer_type if info is not None else infer_answer_type(answer, choices)
    if answer_type == "choice":
        letter = answer.strip().strip("()").strip().upper()
        if len(letter) != 1 or letter not in CHOICE_LETTERS:
            raise ValueError(f"{where}: a multiple-choice answer must be a letter A-E, got {answer!r}")
    return Problem(id=str(raw_id) if raw_id is not None else str(index), question=question, answer=answer,
                   answer_type=answer_type, choices=choices, position=index)


def benchmark_file(spec: BenchmarkSpec, cfg: EvalConfig) -> Path | None:
    """The local data file a set reads (None: a Hugging Face dataset)."""
    path = cfg.resolve_path(spec)
    return None if path is None else data_file(path)


def load_benchmark(spec: BenchmarkSpec, cfg: EvalConfig | None = None) -> list[Problem]:
    """The problems of one set (the first `spec.limit`, else `cfg.limit`, of them when set), validated: every
    record, the pinned SHA-256, and a standard set's row count (of the whole file, before `limit`)."""
    cfg = cfg or EvalConfig()
    path = cfg.resolve_path(spec)
    if path is not None:
        rows = read_records(path)
        source = str(data_file(path))
        if spec.sha256 and sha256_file(source) != spec.sha256.lower():
            raise ValueError(f"{source}: SHA-256 {sha256_file(source)}, but benchmark {spec.name} pins "
                             f"{spec.sha256.lower()}; use the pinned file or update the benchmark's sha256")
    else:
        hf = spec.hf or (spec.info.hf if spec.info else None)
        if hf is None:
            raise ValueError(f"benchmark {spec.name!r}: no data: set its path (a JSON/JSONL file), its hf dataset "
                             f"name, or eval data_dir (a folder with {spec.info.subdir + '/' if spec.info else ''}"
                             "test.json)")
        kwargs = {"split": spec.split}
        if spec.hf_config:
            kwargs["name"] = spec.hf_config
        rows = [(f"{hf} ({spec.split}): row {i + 1}", r) for i, r in enumerate(_load_hf(hf, **kwargs))]
        source = hf
        if not rows:
            raise ValueError(f"{hf} ({spec.split}): the dataset split is empty")
    info = spec.info
    if info is not None and info.n_expected and len(rows) != info.n_expected and not cfg.allow_row_count_mismatch:
        raise ValueError(f"{source}: {len(rows)} rows, the {spec.name} set has {info.n_expected}; use the full "
                         "set, or set eval.allow_row_count_mismatch: true to evaluate this file (use limit for a "
                         "subset of the full file)")
    fmt = spec.format
    if fmt == "auto":
        fmt = "fields" if spec.fields else "lookup"
    limit = spec.limit if spec.limit is not None else cfg.limit
    if limit is not None:
        rows = rows[:limit]
    opd = cfg.protocol == "opd"
    return [to_problem(where, rec, i, spec, fmt, opd=opd) for i, (where, rec) in enumerate(rows)]
