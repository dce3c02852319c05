"""Tokenization: completion-only labels aligned for next-token prediction, length policy, cache."""

from __future__ import annotations

import pytest

import wdl.data.tokenize as tokmod
from tests.data.conftest import chat, write_jsonl
from wdl.data import load_records, tokenize_records

from wdl.labels import IGNORE_INDEX


def supervised_text(tok, row) -> str:
    """Decode the targets: labels are shifted, so label[t] is the token at t + 1."""
    ids, labels = row["input_ids"], row["labels"]
    assert labels[-1] == IGNORE_INDEX and len(ids) == len(labels)
    for t, y in enumerate(labels[:-1]):
        assert y == IGNORE_INDEX or y == ids[t + 1], f"label {t} is not the next token"
    return tok.decode([y for y in labels if y != IGNORE_INDEX])


def test_completion_only_labels_multi_turn(tmp_path, make_cfg, tiny_tokenizer):
    conv = {"idx": 5, "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a?"}, {"role": "assistant", "content": "<think>\nr1\n</think>\n\nA1"},
        {"role": "user", "content": "b?"}, {"role": "assistant", "content": "<think>\nr2\n</think>\n\nA2"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [conv])
    ds, report = tokenize_records(load_records(make_cfg(path)), tiny_tokenizer, make_cfg(path))
    row = ds[0]
    # the earlier turn as the template renders it in the full conversation (no reasoning), each ending in <|im_end|>
    assert supervised_text(tiny_tokenizer, row) == "A1<|im_end|><think>\nr2\n</think>\n\nA2<|im_end|>"
    assert report.label_tokens == row["num_label_tokens"] == sum(y != IGNORE_INDEX for y in row["labels"])
    assert row["length"] == len(row["input_ids"])
    assert tiny_tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\nBe brief.")


def test_system_prompt_and_loss_on_all(tmp_path, make_cfg, tiny_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [chat(1)])
    cfg = make_cfg(path, system_prompt="You are a math tutor.")
    ds, _ = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    text = tiny_tokenizer.decode(ds[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a math tutor.<|im_end|>")
    assert supervised_text(tiny_tokenizer, ds[0]).endswith("\\boxed{2}.<|im_end|>")
    cfg_all = make_cfg(path, loss_on="all")
    ds_all, _ = tokenize_records(load_records(cfg_all), tiny_tokenizer, cfg_all)
    assert ds_all[0]["num_label_tokens"] == ds_all[0]["length"] - 1


def test_plain_text_gets_eos_and_all_labels(tmp_path, make_cfg, tiny_tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [{"idx": 0, "text": "3 + 4 = 7"}])
    cfg = make_cfg(path, loss_on="all")
    ds, _ = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    assert ds[0]["input_ids"][-1] == tiny_tokenizer.eos_token_id
    assert supervised_text(tiny_tokenizer, ds[0]) == tiny_tokenizer.decode(ds[0]["input_ids"][1:])


def test_truncate_and_drop_counts(tmp_path, make_cfg, tiny_tokenizer):
    rows = [chat(1), chat(2, answer="word " * 200), chat(3)]
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    cfg = make_cfg(path, max_length=64)
    ds, report = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    assert report.truncated == 1 and report.kept == 3 and max(ds["length"]) == 64
    cfg = make_cfg(path, max_length=64, overlong="drop")
    ds, report = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    assert report.dropped_overlong == 1 and ds["idx"] == [1, 3]
    assert "1 dropped as too long" in str(report)


def test_no_supervised_token_after_truncation(tmp_path, make_cfg, tiny_tokenizer):
    long_prompt = {"idx": 9, "messages": [{"role": "user", "content": "x " * 300},
                                          {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [chat(1), long_prompt])
    cfg = make_cfg(path, max_length=32)
    with pytest.raises(ValueError, match=r"c.jsonl:2: no supervised token after truncation"):
        tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    cfg = make_cfg(path, max_length=32, on_bad_record="skip")
    ds, report = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    assert ds["idx"] == [1] and report.skipped == {"no supervised token after truncation": 1}


def test_record_without_assistant(tmp_path, make_cfg, tiny_tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [chat(1), {"idx": 2, "messages": [{"role": "user", "content": "hi"}]}])
    cfg = make_cfg(path)
    with pytest.raises(ValueError, match=r"c.jsonl:2: no assistant message"):
        tokenize_records(load_records(cfg), tiny_tokenizer, cfg)


def test_second_call_is_a_cache_hit(tmp_path, make_cfg, tiny_tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", [chat(i) for i in range(20)])
    cfg = make_cfg(path)
    first, _ = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)

    def boom(*a, **k):
        raise AssertionError("tokenized again instead of reading the cache")

    monkeypatch.setattr(tokmod, "_encode", boom)
    second, report = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    assert second["input_ids"] == first["input_ids"] and report.kept == 20
    with pytest.raises(AssertionError, match="tokenized again"):  # a different setting is a different cache entry
        tokenize_records(load_records(cfg), tiny_tokenizer, make_cfg(path, max_length=128))
