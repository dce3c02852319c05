from __future__ import annotations

import json
from pathlib import Path

import pytest

from wdl.data import DataConfig


def chat(i: int, answer: str | None = None) -> dict:
    return {"idx": i, "messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                                   {"role": "assistant",
                                    "content": answer or f"<think>\n{i} + 1 = {i + 1}\n</think>\n\n"
                                                                               f"The answer is \\boxed{{{i + 1}}}."}]}


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def make_cfg(tmp_path):
    def make(*sources, **kw):
        kw.setdefault("cache_dir", str(tmp_path / "cache"))
        kw.setdefault("max_length", 256)
        kw.setdefault("tokens_per_micro_batch", 512)
        return DataConfig(sources=[str(s) for s in sources], **kw)

    return make
