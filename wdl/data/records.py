"""Training records -> a `datasets.Dataset` of {idx, messages} (chat) or {idx, text} (plain text) rows.

Accepted record forms (auto-detected per record unless `format` fixes one; `field_map` renames fields first):
  messages            {"messages": [{"role", "content"}, ...], "idx"?}
  instruction         {"instruction", "input"?, "output"}                  (Alpaca style)
  qa                  {"question" | "problem", "answer" | "solution"}
  prompt_completion   {"prompt", "completion" | "response"}
  text                {"text"}                                               (plain text, loss_on="all")
Every row keeps its `source` (file or dataset) and `line` (1-based line / record number) so that later errors
can name them. Local files are parsed here (exact file:line errors: invalid UTF-8 or JSON, a record of no known
form, an idx that is not an integer in [0, 2**63)) into a datasets cache keyed by the files' size and mtime; a
file without any record is an error. Hub datasets are read with `datasets.load_dataset`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from .config import DataConfig

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
_DETECT = (  # (format, required fields) in detection order
    ("messages", ("messages",)),
    ("instruction", ("instruction", "output")),
    ("qa", ("question", "answer")),
    ("qa", ("problem", "answer")),
    ("qa", ("problem", "solution")),
    ("qa", ("question", "solution")),
    ("prompt_completion", ("prompt", "completion")),
    ("prompt_completion", ("prompt", "response")),
    ("text", ("text",)),
)
_FEATURES = datasets.Features({
    "idx": datasets.Value("int64"),
    "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
    "text": datasets.Value("string"),
    "source": datasets.Value("string"),
    "line": datasets.Value("int64"),
})


class RecordError(ValueError):
    """A malformed record; the message names the source and line."""


MAX_IDX = 2**63 - 1  # ids are int64 everywhere (datasets columns, sample_idx tensors)


def check_idx(idx) -> None:
    """A record's idx is absent (None) or an integer in [0, MAX_IDX]; -1 marks padding and unassigned ids."""
    if idx is None:
        return
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise RecordError(f"idx must be an integer, got {idx!r}")
    if not 0 <= idx <= MAX_IDX:
        raise RecordError(f"idx must be an integer in [0, 2**63), got {idx}")


@dataclass
class LoadReport:
    records: int = 0
    assigned_ids: bool = False
    skipped: Counter = field(default_factory=Counter)  # reason -> count (on_bad_record="skip")

    def __str__(self) -> str:
        skipped = sum(self.skipped.values())
        extra = f", skipped {skipped} ({dict(self.skipped)})" if skipped else ""
        ids = ", idx assigned by position" if self.assigned_ids else ""
        return f"{self.records} records{ids}{extra}"


def _pick(rec: dict, *names: str):
    for n in names:
        if rec.get(n) is not None:
            return rec[n]
    return None


def _as_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(f"{what} must be a string, got {type(value).__name__}")
    return value


def normalize(rec, fmt: str, field_map: dict[str, str]) -> tuple[list[dict] | None, str | None, object]:
    """(messages, text, idx) of one raw record; raises RecordError with what is wrong."""
    if not isinstance(rec, dict):
        raise RecordError(f"a record must be a JSON object, got {type(rec).__name__}")
    if field_map:
        rec = {**rec, **{ours: rec[theirs] for ours, theirs in field_map.items() if theirs in rec}}
    if fmt == "auto":
        fmt = next((f for f, need in _DETECT if all(k in rec for k in need)), None)
        if fmt is None:
            raise RecordError(f"cannot tell the record format from its fields {sorted(rec)}: expected messages, "
                              "instruction/output, question/answer, prompt/completion or text (or set data.format "
                              "and data.field_map)")
    idx = rec.get("idx")
    if fmt == "text":
        return None, _as_text(rec.get("text"), "text"), idx
    if fmt == "messages":
        msgs = rec.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise RecordError("messages must be a non-empty list of {role, content} objects")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise RecordError(f"messages[{i}] must be an object with role and content")
            if m["role"] not in ROLES:
                raise RecordError(f"messages[{i}].role {m['role']!r} is unknown: use one of {ROLES}")
            out.append({"role": m["role"], "content": _as_text(m["content"], f"messages[{i}].content")})
        return out, None, idx
    if fmt == "instruction":
        prompt = _as_text(rec.get("instruction"), "instruction")
        extra = rec.get("input")
        if extra:
            prompt = f"{prompt}\n\n{_as_text(extra, 'input')}"
        answer = _as_text(rec.get("output"), "output")
    elif fmt == "qa":
        prompt = _as_text(_pick(rec, "question", "problem"), "question")
        answer = _as_text(_pick(rec, "solution", "answer"), "answer")
    else:  # prompt_completion
        prompt = _as_text(rec.get("prompt"), "prompt")
        answer = _as_text(_pick(rec, "completion", "response"), "completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], None, idx


def _not_utf8(e: UnicodeDecodeError) -> str:
    return f"not valid UTF-8 (byte {e.start} of the line): save the file as UTF-8"


def _iter_json_file(path: Path):
    """(line number, parsed object or RecordError) for a .jsonl file, or (record number, object) for a .json
    list. A line that is not UTF-8 or not JSON is a RecordError for that line (skippable); a file without any
    record is a ValueError."""
    if path.suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ValueError(f"{path}:{line}: not valid UTF-8 (byte {e.start} of the file): save the file as "
                             "UTF-8") from None
        if not text.strip():
            raise ValueError(f"{path}: the file is empty: it holds no records (fill it or remove it from "
                             "data.sources)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json source must hold a list of records")
        if not data:
            raise ValueError(f"{path}: the list of records is empty (fill it or remove it from data.sources)")
        yield from enumerate(data, start=1)
        return
    seen = False
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                seen = True
                yield lineno, RecordError(_not_utf8(e))
                continue
            if not line.strip():
                continue
            seen = True
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, RecordError(f"invalid JSON: {e.msg}")
    if not seen:
        raise ValueError(f"{path}: the file holds no records (it is empty or has only blank lines): fill it or "
                         "remove it from data.sources")


def _generate(files: list[str], fmt: str, field_map: dict, on_bad: str, report_path: str, **_stamp):
    """datasets generator: validated rows of all local files (the _stamp kwargs only key the cache)."""
    skipped: Counter = Counter()
    n = 0
    for name in files:
        path = Path(name)
        for lineno, rec in _iter_json_file(path):
            try:
                if isinstance(rec, RecordError):
                    raise rec
                messages, text, idx = normalize(rec, fmt, field_map)
                check_idx(idx)
            except RecordError as e:
                if on_bad == "error":
                    raise ValueError(f"{path}:{lineno}: {e} (or set data.on_bad_record=skip)") from None
                skipped[str(e)[:60]] += 1
                continue
            n += 1
            yield {"idx": -1 if idx is None else idx, "messages": messages, "text": text, "source": str(path),
                   "line": lineno, "_has_idx": idx is not None}
    if n == 0:
        raise ValueError(f"data.sources {files} hold no usable record (skipped: {dict(skipped)})")
    Path(report_path).write_text(json.dumps(dict(skipped)))


def _load_local(files: list[Path], cfg: DataConfig) -> tuple[datasets.Dataset, Counter]:
    stamp = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    cache_dir = cfg.cache_dir or None
    report_dir = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "wdl_records"
    report_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(json.dumps([stamp, cfg.format, cfg.field_map, cfg.on_bad_record]).encode()).hexdigest()[:16]
    report_path = str(report_dir / f"skipped-{key}.json")
    features = datasets.Features({**_FEATURES, "_has_idx": datasets.Value("bool")})
    try:
        ds = datasets.Dataset.from_generator(
            _generate, features=features, cache_dir=cache_dir,
            gen_kwargs=dict(files=[str(p) for p in files], fmt=cfg.format, field_map=cfg.field_map,
                            on_bad=cfg.on_bad_record, report_path=report_path, stamp=stamp, version=2),
        )
    except Exception as e:  # datasets wraps the generator's exception; surface our ValueError as is
        cause = e
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise ValueError(str(cause)) from None
        raise
    skipped = Counter(json.loads(Path(report_path).read_text())) if os.path.exists(report_path) else Counter()
    return ds, skipped


def _load_hub(name: str, cfg: DataConfig) -> tuple[datasets.Dataset, Counter]:
    repo, _, config = name.partition(":")
    try:
        raw = datasets.load_dataset(repo, config or None, split=cfg.split, cache_dir=cfg.cache_dir)
    except OSError as e:  # offline, an unknown name (DatasetNotFoundError is a FileNotFoundError)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"data.sources: {name}: not a local file, and the Hugging Face dataset could not be loaded "
                         f"({first}): give the path of a local .jsonl/.json file, or load the dataset once where "
                         "the hub is reachable (it is cached then)") from None

    def convert(rec, i):
        try:
            messages, text, idx = normalize(rec, cfg.format, cfg.field_map)
            check_idx(idx)
            ok = True
        except RecordError as e:
            if cfg.on_bad_record == "error":
                raise ValueError(f"{name} (split {cfg.split}) record {i + 1}: {e}") from None
            messages, text, idx, ok = None, None, None, False
        return {"idx": -1 if idx is None else int(idx), "messages": messages, "text": text, "source": name,
                "line": i + 1, "_has_idx": idx is not None, "_ok": ok}

    features = datasets.Features({**_FEATURES, "_has_idx": datasets.Value("bool"), "_ok": datasets.Value("bool")})
    ds = raw.map(convert, with_indices=True, remove_columns=raw.column_names, features=features)
    bad = ds.filter(lambda r: not r["_ok"]).num_rows
    ds = ds.filter(lambda r: r["_ok"]).remove_columns("_ok")
    return ds, Counter({"invalid record": bad} if bad else {})


def _looks_local(source: str) -> bool:
    """A file path rather than a hub dataset name ("name", "org/name", "org/name:config")."""
    return source.endswith((".json", ".jsonl")) or source.startswith(("/", ".", "~")) or \
        source.partition(":")[0].count("/") > 1


def check_sources(sources) -> list[Path]:
    """The local files among `sources` (each that exists); a ValueError for a path that does not exist (or is a
    directory). Names that are not paths are hub datasets, looked up when they are loaded."""
    local = []
    for s in sources:
        p = Path(s).expanduser()
        if p.is_dir():
            raise ValueError(f"data.sources: {s} is a directory; list its .jsonl/.json files")
        if p.exists():
            local.append(p)
        elif _looks_local(s):
            raise ValueError(f"data.sources: {s} does not exist")
    return local


def load_records_with_report(cfg: DataConfig) -> tuple[datasets.Dataset, LoadReport]:
    if not cfg.sources:
        raise ValueError("data.sources is empty: list the training files (chat JSONL with messages/idx) or datasets")
    parts, report = [], LoadReport()
    local = check_sources(cfg.sources)
    if local:
        ds, skipped = _load_local(local, cfg)
        parts.append(ds)
        report.skipped.update(skipped)
    for s in cfg.sources:
        if not Path(s).expanduser().exists():
            ds, skipped = _load_hub(s, cfg)
            parts.append(ds)
            report.skipped.update(skipped)
    ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    if ds.num_rows == 0:
        raise ValueError(f"data.sources {cfg.sources} hold no usable record ({report})")
    has = ds["_has_idx"]
    if all(has):
        ids = ds["idx"]
        if len(set(ids)) != len(ids):
            dup = next(i for i, c in Counter(ids).items() if c > 1)
            rows = [r for r, i in enumerate(ids) if i == dup][:2]
            where = ", ".join(f"{ds[r]['source']}:{ds[r]['line']}" for r in rows)
            raise ValueError(f"duplicate idx {dup} at {where}: sample ids must be unique (or remove idx everywhere to "
                             "have them assigned)")
    elif any(has):
        first = has.index(False)
        raise ValueError(f"{ds[first]['source']}:{ds[first]['line']}: this record has no idx while others do; give "
                         "every record an idx or none (ids are then assigned by position)")
    else:
        ds = ds.map(lambda r, i: {"idx": i}, with_indices=True)
        report.assigned_ids = True
        log.warning("the records have no idx: assigned ids 0..%d by position in %s", ds.num_rows - 1, cfg.sources)
    report.records = ds.num_rows
    if report.skipped:
        log.warning("skipped malformed records: %s", dict(report.skipped))
    return ds.remove_columns("_has_idx"), report


def load_records(cfg: DataConfig) -> datasets.Dataset:
    """Rows {idx, messages, text, source, line}; messages is None for plain-text records and text None otherwise."""
    return load_records_with_report(cfg)[0]
