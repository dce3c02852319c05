"""Records -> token ids and next-token labels through the tokenizer's chat template (cached by `datasets`).

Chat records are rendered with `tokenizer.apply_chat_template`. Assistant spans are found on the rendered
text, generically for any template: an assistant turn starts where the template's generation prompt for the
preceding messages ends, and ends after the template's end-of-turn marker (e.g. Qwen's `<|im_end|>`, which is
supervised so that the model learns to stop). Earlier turns are taken as the template renders them in the
full conversation (Qwen3 drops their reasoning), which is what the model sees at inference.

Output rows: idx, input_ids, labels (already shifted, see wdl/labels.py; the last position has no target),
num_label_tokens, length.

Memory stays bounded by max_length, not by the longest record: no token is longer than the tokenizer's longest
vocabulary entry (L characters), so a text of more than (max_length + 16) * L characters is certainly over
max_length tokens, and only such a prefix of it is tokenized (doubled until it yields more than max_length + 16
tokens, for tokenizers whose normalizer drops characters). The kept tokens are those of the whole text except
where one pre-tokenizer chunk spans the cut (16 tokens later), which BPE merges could change.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field

import datasets

from wdl.labels import count_label_tokens, next_token_labels

from .config import DataConfig

_PROBE_USER, _PROBE_ANSWER = "wdl-probe-question", "wdl-probe-answer"


@dataclass
class TokenizeReport:
    total: int = 0
    kept: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count (on_bad_record="skip")
    tokens: int = 0
    label_tokens: int = 0

    def __str__(self) -> str:
        parts = [f"{self.kept}/{self.total} samples", f"{self.tokens} tokens", f"{self.label_tokens} supervised"]
        if self.truncated:
            parts.append(f"{self.truncated} truncated")
        if self.dropped_overlong:
            parts.append(f"{self.dropped_overlong} dropped as too long")
        if self.skipped:
            parts.append(f"skipped {dict(self.skipped)}")
        return ", ".join(parts)


def end_of_turn_marker(tokenizer, enable_thinking: bool = True) -> str:
    """What the chat template puts after an assistant message's content (whitespace stripped), e.g. <|im_end|>."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}],
        tokenize=False, enable_thinking=enable_thinking)
    marker = text[text.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER):].strip()
    if not marker:  # a template without an end marker: fall back to the eos token
        marker = tokenizer.eos_token or ""
    return marker


def assistant_spans(tokenizer, messages: list[dict], enable_thinking: bool, marker: str) -> tuple[str, list]:
    """The rendered conversation and the [start, end) character spans of its assistant turns."""
    full = tokenizer.apply_chat_template(messages, tokenize=False, enable_thinking=enable_thinking)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True,
                                               enable_thinking=enable_thinking) if i else ""
        if not full.startswith(prompt):
            raise ValueError(f"the chat template does not render message {i} as a continuation of the messages "
                             "before it; cannot locate the assistant tokens")
        end = full.find(marker, len(prompt)) if marker else -1
        end = len(full) if end < 0 else end + len(marker)
        spans.append((len(prompt), end))
    return full, spans


def _supervised_mask(offsets, spans) -> list[bool]:
    starts = [s for s, _ in spans]
    mask = []
    for a, _b in offsets:
        k = bisect.bisect_right(starts, a) - 1
        mask.append(k >= 0 and spans[k][0] <= a < spans[k][1])
    return mask


_CUT_MARGIN = 16  # tokens beyond max_length that a cut text must still yield


def max_token_chars(tokenizer) -> int:
    """An upper bound on the characters of text one token covers: the longest vocabulary entry (byte-level BPE
    spells a byte as one character, so this bounds bytes and thus characters)."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def _bounded_encode(tokenizer, text: str, max_length: int, chars_per_token: int, **kwargs):
    """tokenizer(text) or, for a text certainly longer than max_length tokens, of a prefix that yields more
    than max_length + _CUT_MARGIN tokens. Returns (encoding, cut)."""
    limit = (max_length + _CUT_MARGIN) * chars_per_token
    while limit < len(text):
        enc = tokenizer(text[:limit], **kwargs)
        if len(enc["input_ids"]) > max_length + _CUT_MARGIN:
            return enc, True
        limit *= 2
    return tokenizer(text, **kwargs), False


def _encode(row: dict, tokenizer, cfg: DataConfig, marker: str, chars_per_token: int = 1 << 30) -> dict:
    """One record -> dict(input_ids, supervised mask, status)."""
    if row["messages"] is None:  # plain text: every token (and the closing eos) is a target
        enc, cut = _bounded_encode(tokenizer, row["text"], cfg.max_length, chars_per_token, add_special_tokens=False)
        ids = enc["input_ids"]
        if tokenizer.eos_token_id is not None and not cut:
            ids = ids + [tokenizer.eos_token_id]
        return {"ids": ids, "mask": [True] * len(ids)}
    messages = list(row["messages"])
    if cfg.system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": cfg.system_prompt}, *messages]
    if cfg.loss_on == "completion" and not any(m["role"] == "assistant" for m in messages):
        raise _Skip("no assistant message")
    text, spans = assistant_spans(tokenizer, messages, cfg.enable_thinking, marker)
    enc, _ = _bounded_encode(tokenizer, text, cfg.max_length, chars_per_token, add_special_tokens=False,
                             return_offsets_mapping=True)
    mask = [True] * len(enc["input_ids"]) if cfg.loss_on == "all" else _supervised_mask(enc["offset_mapping"], spans)
    return {"ids": enc["input_ids"], "mask": mask}


class _Skip(Exception):
    pass


def _tokenizer_fingerprint(tokenizer) -> str:
    h = hashlib.sha1()
    h.update(tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer")
             else repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(str(tokenizer.chat_template).encode())
    h.update(json.dumps([tokenizer.eos_token, tokenizer.pad_token], default=str).encode())
    return h.hexdigest()


def tokenize_records(records: datasets.Dataset, tokenizer, cfg: DataConfig,
                     progress=None) -> tuple[datasets.Dataset, TokenizeReport]:
    """Tokenize `load_records` output. Cached: the same records, tokenizer and settings reuse the cache files.
    `progress` (a wdl.progress.Progress) counts the records as they are encoded (not when read from the cache)."""
    marker = end_of_turn_marker(tokenizer, cfg.enable_thinking) if cfg.loss_on == "completion" else ""
    settings = [cfg.system_prompt, cfg.enable_thinking, cfg.loss_on, cfg.max_length, cfg.overlong,
                cfg.on_bad_record, marker]
    fingerprint = hashlib.sha1(json.dumps(
        [records._fingerprint, _tokenizer_fingerprint(tokenizer), settings, "v2"]).encode()).hexdigest()
    chars_per_token = max_token_chars(tokenizer)

    def encode_batch(batch):
        out = {"idx": [], "input_ids": [], "labels": [], "num_label_tokens": [], "length": [], "status": []}
        for i in range(len(batch["idx"])):
            row = {k: batch[k][i] for k in ("messages", "text")}
            where = f"{batch['source'][i]}:{batch['line'][i]}"
            status = "ok"
            try:
                enc = _encode(row, tokenizer, cfg, marker, chars_per_token)
            except _Skip as e:
                if cfg.on_bad_record == "error":
                    raise ValueError(f"{where}: {e}: nothing to train on (or set data.on_bad_record=skip)") from None
                enc, status = {"ids": [], "mask": []}, f"skipped: {e}"
            ids, mask = enc["ids"], enc["mask"]
            if status == "ok" and len(ids) > cfg.max_length:
                if cfg.overlong == "drop":
                    status = "dropped_overlong"
                else:
                    ids, mask, status = ids[: cfg.max_length], mask[: cfg.max_length], "truncated"
            labels = next_token_labels(ids, mask) if ids else []
            n_label = count_label_tokens(labels)
            if status in ("ok", "truncated") and n_label == 0:
                reason = "no supervised token" + (" after truncation" if status == "truncated" else "")
                if cfg.on_bad_record == "error":
                    raise ValueError(f"{where}: {reason} (max_length={cfg.max_length}); raise data.max_length, use "
                                     "data.overlong=drop, or set data.on_bad_record=skip")
                status = f"skipped: {reason}"
            out["idx"].append(batch["idx"][i])
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["num_label_tokens"].append(n_label)
            out["length"].append(len(ids))
            out["status"].append(status)
        if progress is not None:
            progress.update(len(batch["idx"]))
        return out

    features = datasets.Features({
        "idx": datasets.Value("int64"), "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")), "num_label_tokens": datasets.Value("int64"),
        "length": datasets.Value("int64"), "status": datasets.Value("string"),
    })
    try:
        encoded = records.map(encode_batch, batched=True, batch_size=256, remove_columns=records.column_names,
                              features=features, new_fingerprint=fingerprint, num_proc=cfg.num_proc,
                              desc="tokenizing")
    except Exception as e:  # surface our ValueError (file:line) from inside datasets' worker wrapping
        cause = e
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None and cause is not e:
            raise ValueError(str(cause)) from None
        raise
    status = Counter(encoded["status"])
    report = TokenizeReport(total=records.num_rows, truncated=status.get("truncated", 0),
                            dropped_overlong=status.get("dropped_overlong", 0),
                            skipped=Counter({k[len("skipped: "):]: v for k, v in status.items()
                                             if k.startswith("skipped: ")}))
    keep = encoded.filter(lambda s: [x in ("ok", "truncated") for x in s], input_columns="status", batched=True,
                          new_fingerprint=hashlib.sha1((fingerprint + "keep").encode()).hexdigest())
    keep = keep.remove_columns("status")
    report.kept = keep.num_rows
    report.tokens = int(sum(keep["length"]))
    report.label_tokens = int(sum(keep["num_label_tokens"]))
    if keep.num_rows == 0:
        raise ValueError(f"no trainable sample left after tokenization ({report})")
    return keep, report
