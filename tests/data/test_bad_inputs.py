"""Bad training data: every case named by file and line (or file), and a huge record tokenized in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data.conftest import chat, write_jsonl
from wdl.data import load_records, load_records_with_report, tokenize_records
from wdl.data.tokenize import max_token_chars


def test_invalid_utf8_names_file_and_line(tmp_path, make_cfg):
    path = tmp_path / "d.jsonl"
    good = json.dumps(chat(1)).encode()
    path.write_bytes(good + b"\n" + json.dumps(chat(2)).encode()[:-5] + b"\xff\xfe" + b'"}]}\n')
    with pytest.raises(ValueError) as e:
        load_records(make_cfg(path))
    assert str(e.value).startswith(f"{path}:2: not valid UTF-8 (byte ") and "save the file as UTF-8" in str(e.value)
    ds, report = load_records_with_report(make_cfg(path, on_bad_record="skip"))
    assert ds["idx"] == [1] and sum(report.skipped.values()) == 1
    listed = tmp_path / "d.json"
    listed.write_bytes(b'[\n{"question": "a", "answer": "b"},\n{"question": "\xc3(", "answer": "b"}\n]')
    with pytest.raises(ValueError, match=rf"^{listed}:3: not valid UTF-8"):
        load_records(make_cfg(listed))


def test_a_utf8_byte_order_mark_is_accepted(tmp_path, make_cfg):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(chat(4)).encode() + b"\n")
    assert load_records(make_cfg(path))["idx"] == [4]


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_or_blank_files_are_named(tmp_path, make_cfg, content):
    good = write_jsonl(tmp_path / "good.jsonl", [chat(1)])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content)
    with pytest.raises(
        ValueError,
        match=rf"^{empty}: the file holds no records \(it is empty or has only blank "
        r"lines\): fill it or remove it from data.sources",
    ):
        load_records(make_cfg(good, empty))


def test_empty_json_list_and_nothing_usable(tmp_path, make_cfg):
    listed = tmp_path / "e.json"
    listed.write_text("[]")
    with pytest.raises(ValueError, match=rf"^{listed}: the list of records is empty"):
        load_records(make_cfg(listed))
    listed.write_text("")
    with pytest.raises(ValueError, match=rf"^{listed}: the file is empty"):
        load_records(make_cfg(listed))
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{nope", "{nope"])
    with pytest.raises(ValueError, match=r"hold no usable record \(skipped: \{'invalid JSON"):
        load_records(make_cfg(bad, on_bad_record="skip"))


@pytest.mark.parametrize("idx", [-5, -1, 2**70, 2**63])
def test_idx_out_of_range_names_file_and_line(tmp_path, make_cfg, idx):
    path = write_jsonl(tmp_path / "d.jsonl", [chat(0), {**chat(1), "idx": idx}])
    with pytest.raises(ValueError) as e:
        load_records(make_cfg(path))
    assert str(e.value) == (
        f"{path}:2: idx must be an integer in [0, 2**63), got {idx} (or set data.on_bad_record=skip)"
    )


def test_the_largest_idx_is_fine(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "d.jsonl", [{**chat(0), "idx": 2**63 - 1}])
    assert load_records(make_cfg(path))["idx"] == [2**63 - 1]


def test_a_huge_record_is_not_tokenized_whole(tmp_path, make_cfg, tiny_tokenizer, monkeypatch):
    huge, long = "word " * 400_000, "word " * 10_000  # 2 MB and 50 kB of text, max_length 64
    path = write_jsonl(tmp_path / "d.jsonl", [chat(1, answer=huge), chat(2, answer=long), chat(3)])
    full_cfg = make_cfg(path, max_length=100_000, tokens_per_micro_batch=100_000, cache_dir=str(tmp_path / "c1"))
    reference, _ = tokenize_records(load_records(full_cfg).select([1]), tiny_tokenizer, full_cfg)

    seen: list[int] = []
    cls = type(tiny_tokenizer)
    original = cls.__call__

    def spy(self, text=None, *args, **kwargs):
        seen.append(len(text) if isinstance(text, str) else sum(map(len, text)))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    cfg = make_cfg(path, max_length=64, tokens_per_micro_batch=512)
    ds, report = tokenize_records(load_records(cfg), tiny_tokenizer, cfg)
    bound = 2 * (64 + 16) * max_token_chars(tiny_tokenizer)
    assert seen and max(seen) <= bound, (max(seen), bound)  # never the 2 MB text
    assert report.truncated == 2 and ds["length"] == [64, 64, ds["length"][2]]
    assert ds[1]["input_ids"] == reference[0]["input_ids"][:64]  # the same tokens as a full tokenization
    drop = make_cfg(path, max_length=64, tokens_per_micro_batch=512, overlong="drop")
    seen.clear()
    ds, report = tokenize_records(load_records(drop), tiny_tokenizer, drop)
    assert ds["idx"] == [3] and report.dropped_overlong == 2 and max(seen) <= bound


_RSS_PROBE = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a regression fails here instead of filling the machine
from wdl.data import DataConfig, load_records, tokenize_records
from wdl.tiny import build_tokenizer
tok, tmp = build_tokenizer(vocab_size=512), Path(sys.argv[1])
path = tmp / "d.jsonl"
with path.open("w") as f:  # one 52 MB record (the issue's case) and a short one
    f.write(json.dumps({"idx": 1, "question": "q?", "answer": "word " * (52_000_000 // 5)}) + "\\n")
    f.write(json.dumps({"idx": 2, "question": "q?", "answer": "short"}) + "\\n")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = DataConfig(sources=[str(path)], cache_dir=str(tmp / "c"), max_length=256, tokens_per_micro_batch=512)
ds, report = tokenize_records(load_records(cfg), tok, cfg)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"grew_mib": grew // 1024, "lengths": list(ds["length"]), "truncated": report.truncated}))
"""


def test_a_52_mb_record_stays_in_bounded_memory(tmp_path):
    """The issue's case end to end in a fresh process (peak RSS is per process): reading, caching and
    tokenizing a 52 MB record with max_length=256 grows the peak RSS by far less than 1 GiB (it was 13 GB)."""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PYTHONPATH": f"{root}:{root / 'kernels'}",
            "HF_HUB_OFFLINE": "1",
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
        },
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["lengths"][0] == 256 and result["truncated"] == 1
    assert result["grew_mib"] < 1024, result
