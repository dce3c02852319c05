"""Every ```python block of README.md and kernels/README.md runs as written (self-contained: no prelude), in a
fresh namespace and a temporary working directory. Blocks in other languages (bash, text) are not run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "kernels/README.md")
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks():
    for doc in DOCS:
        text = (ROOT / doc).read_text()
        for match in FENCE.finditer(text):
            line = text[: match.start()].count("\n") + 2  # the block's first line
            yield pytest.param(doc, line, match.group(1), id=f"{doc}:{line}")


BLOCKS = list(python_blocks())


def test_the_docs_have_python_blocks():
    assert {doc for doc, *_ in (b.values for b in BLOCKS)} == set(DOCS)


@pytest.mark.parametrize("doc,line,code", BLOCKS)
def test_block_runs(doc, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Leading newlines put the block's lines at their line numbers in the doc, for tracebacks.
    exec(compile("\n" * (line - 1) + code, str(ROOT / doc), "exec"), {"__name__": f"readme_block_{line}"})
