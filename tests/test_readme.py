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


SHELL_FENCE = re.compile(r"^```(?:bash|sh|console)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def shell_commands():
    """(doc, command words) of every command in the docs' shell blocks, split at `;`, `&&` and newlines."""
    for doc in DOCS:
        for block in SHELL_FENCE.findall((ROOT / doc).read_text()):
            for line in block.splitlines():
                for part in re.split(r";|&&", line.split("#", 1)[0]):
                    words = [w for w in part.split() if "=" not in w or w.startswith("-")]  # drop VAR=value
                    if words:
                        yield doc, words


def test_shell_blocks_name_real_scripts_commands_and_presets():
    """Shell blocks need GPUs, data or minutes to run; what they name must exist: every script (executable, as
    the blocks run it), every `wdl` subcommand, every preset given to a launcher or subcommand."""
    from wdl.cli import build_parser
    from wdl.configlib import preset_names

    parser = build_parser()
    subcommands = set(next(a for a in parser._actions if a.dest == "command").choices)
    options = {s for a in parser._actions for s in a.option_strings}
    presets = set(preset_names())
    commands = list(shell_commands())
    assert any(words[0] == "wdl" for _, words in commands)  # the check below is not vacuous
    for doc, words in commands:
        for word in words:
            if word.startswith("scripts/"):
                path = ROOT / word
                assert path.is_file() and path.stat().st_mode & 0o111, f"{doc}: {word} is not an executable script"
        preset = None
        if words[0] == "wdl" and words[1].startswith("-"):  # a top-level option: wdl --version
            assert words[1] in options, f"{doc}: `wdl {words[1]}` is not an option of wdl"
        elif words[0] == "wdl":
            assert words[1] in subcommands, f"{doc}: `wdl {words[1]}` is not a wdl subcommand"
            preset = words[2] if len(words) > 2 and not words[2].startswith("-") else None
        elif words[0].startswith("scripts/launch_") and len(words) > 1:
            preset = words[1]
        if preset is not None and "/" not in preset and not preset.endswith((".yaml", ".yml")):
            assert preset in presets, f"{doc}: {' '.join(words)}: no preset {preset!r}"


def test_the_two_commands_are_what_ci_runs():
    """README's two commands (the main job, the test suite) as they are, and CI runs the same test command."""
    block = SHELL_FENCE.search((ROOT / "README.md").read_text().split("## Two commands", 1)[1]).group(1)
    assert [line.split("#", 1)[0].strip() for line in block.splitlines()] == [
        "bash scripts/run.sh",
        "bash scripts/test.sh",
    ]
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ci[-1] == "bash scripts/test.sh"
