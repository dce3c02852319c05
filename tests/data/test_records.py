"""Loading records: every accepted form, and every malformed input named by file and line."""

from __future__ import annotations

import json

import pytest

from tests.data.conftest import chat, write_jsonl
from wdl.data import DataConfig, load_records, load_records_with_report


def test_all_formats_normalise_to_messages(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        chat(0),
        {"idx": 1, "instruction": "Add", "input": "2 and 3", "output": "5"},
        {"idx": 2, "question": "2+2?", "answer": "4"},
        {"idx": 3, "problem": "3+3?", "solution": "6"},
        {"idx": 4, "prompt": "Say hi", "completion": "hi"},
        {"idx": 5, "text": "plain text"},
    ])
    ds = load_records(make_cfg(path))
    rows = {r["idx"]: r for r in ds}
    assert rows[1]["messages"] == [{"role": "user", "content": "Add\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert rows[2]["messages"][1]["content"] == "4" and rows[3]["messages"][0]["content"] == "3+3?"
    assert rows[4]["messages"][0]["content"] == "Say hi"
    assert rows[5]["messages"] is None and rows[5]["text"] == "plain text"
    assert [r["line"] for r in ds] == [1, 2, 3, 4, 5, 6] and ds[0]["source"] == str(path)


def test_field_map_and_json_list(tmp_path, make_cfg):
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"q": "1+1?", "a": "2"}, {"q": "2+2?", "a": "4"}]))
    ds = load_records(make_cfg(path, format="qa", field_map={"question": "q", "answer": "a"}))
    assert ds[1]["messages"][1]["content"] == "4"
    assert ds["idx"] == [0, 1]  # assigned by position


def test_ids_assigned_by_position_when_absent(tmp_path, make_cfg, caplog):
    a = write_jsonl(tmp_path / "a.jsonl", [{"question": "x", "answer": "1"}] * 2)
    b = write_jsonl(tmp_path / "b.jsonl", [{"question": "y", "answer": "2"}])
    ds, report = load_records_with_report(make_cfg(a, b))
    assert ds["idx"] == [0, 1, 2] and report.assigned_ids
    assert "assigned ids" in caplog.text


@pytest.mark.parametrize("bad,message", [
    ('{"idx": 0, "messages": [', "invalid JSON"),
    ({"idx": 0}, "cannot tell the record format"),
    ({"idx": 0, "messages": []}, "messages must be a non-empty list"),
    ({"idx": 0, "messages": "hi"}, "messages must be a non-empty list"),
    ({"idx": 0, "messages": [{"role": "tool", "content": "x"}]}, "role 'tool' is unknown"),
    ({"idx": 0, "messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content must be a string"),
    ({"idx": 0, "messages": [{"content": "x"}]}, "messages[0] must be an object with role and content"),
    ({"idx": "a", "messages": [{"role": "user", "content": "x"}]}, "idx must be an integer"),
    ([1, 2], "must be a JSON object"),
])
def test_bad_records_name_file_and_line(tmp_path, make_cfg, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(7), chat(8), bad])
    with pytest.raises(ValueError) as err:
        load_records(make_cfg(path))
    assert f"{path}:3: " in str(err.value) and message in str(err.value)


def test_skip_mode_counts_and_reports(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat(1), "{nope",
                                                       {"idx": 2, "messages": [{"role": "x", "content": "y"}]},
                                                chat(3)])
    ds, report = load_records_with_report(make_cfg(path, on_bad_record="skip"))
    assert ds["idx"] == [1, 3] and sum(report.skipped.values()) == 2
    assert "skipped 2" in str(report)
    again, report2 = load_records_with_report(make_cfg(path, on_bad_record="skip"))  # from the cache: same report
    assert again["idx"] == [1, 3] and report2.skipped == report.skipped


def test_duplicate_and_mixed_ids(tmp_path, make_cfg):
    dup = write_jsonl(tmp_path / "dup.jsonl", [chat(1), chat(2), chat(1)])
    with pytest.raises(ValueError, match=r"duplicate idx 1 at .*dup.jsonl:1, .*dup.jsonl:3"):
        load_records(make_cfg(dup))
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat(1), {"question": "q", "answer": "a"}])
    with pytest.raises(ValueError, match=r"mixed.jsonl:2: this record has no idx while others do"):
        load_records(make_cfg(mixed))


def test_missing_sources(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_records(DataConfig(sources=[str(tmp_path / "nope.jsonl")]))
    with pytest.raises(ValueError, match="data.sources is empty"):
        load_records(DataConfig())


def test_file_change_invalidates_the_cache(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(1)])
    assert load_records(make_cfg(path))["idx"] == [1]
    write_jsonl(path, [chat(1), chat(2)])
    assert load_records(make_cfg(path))["idx"] == [1, 2]


@pytest.mark.parametrize("kw,message", [
    (dict(format="xml"), "data.format"), (dict(max_length=0), "data.max_length"),
    (dict(max_length=100, tokens_per_micro_batch=50), "tokens_per_micro_batch (50) must be >= data.max_length"),
    (dict(overlong="cut"), "data.overlong"), (dict(global_batch_size=0), "global_batch_size"),
])
def test_config_validation(kw, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DataConfig(**kw)
