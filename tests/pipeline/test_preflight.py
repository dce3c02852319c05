"""The preflight (`wdl check`, and the start of `wdl run`): one line per problem with its fix, nothing started;
the presets' eval from local files, offline; the progress reporter's log lines."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest

import wdl.preflight
from wdl import synthetic
from wdl.cli import main
from wdl.config import load_pipeline_config
from wdl.pipeline import Pipeline
from wdl.progress import Progress

# the seven reference sets in the reference layout, two records each, as their files look
SET_RECORDS = {
    "aime2025": [{"question": "Find 2+3.", "answer": "5"}, {"question": "Find 7*6.", "answer": "42"}],
    "amc23": [{"instruction": "What is 9-4?", "answer": "5"}, {"instruction": "What is 3^2?", "answer": "9"}],
    "AQuA": [
        {"instruction": "1+1? Answer Choices: (A) 1 (B) 2 (C) 3 (D) 4 (E) 5", "input": "", "output": "", "answer": "B"}
    ]
    * 2,
    "gsm8k": [{"instruction": "Tom has 3 apples and buys 4. How many?", "input": "", "output": "", "answer": "7.0"}]
    * 2,
    "mawps": [{"instruction": "5 birds and 2 more. How many?", "input": "", "output": "", "answer": "7.0"}] * 2,
    "SVAMP": [{"instruction": "8 cakes, 3 eaten. How many left?", "input": "", "output": "", "answer": "5.0"}] * 2,
}
MATH500 = [{"problem": "Compute $1+1$.", "answer": "2", "unique_id": "test/a.json"}] * 2


def write_sets(root: Path, names=tuple(SET_RECORDS), math500: bool = False) -> Path:
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "test.json").write_text(json.dumps(SET_RECORDS[name]))
    if math500:
        (root / "math500").mkdir(parents=True, exist_ok=True)
        (root / "math500" / "test.json").write_text(json.dumps(MATH500))
    return root


@pytest.fixture
def offline(monkeypatch):
    """No hub: HF_HUB_OFFLINE, and any benchmark download fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a benchmark was fetched from the hub: {args}")

    monkeypatch.setattr("wdl.eval.data._load_hf", no_hub)


@pytest.fixture
def setup(tmp_path, tiny_model_dir, offline):
    """A local model, training data and eval sets: everything a qwen3 preset run needs."""
    train = tmp_path / "train.jsonl"
    synthetic.write_chat_jsonl(train, synthetic.make_splits(6, 0, 0, seed=1).train)
    sets = write_sets(tmp_path / "seed_eval")
    args = [
        "qwen3-0.6b",
        "--out",
        str(tmp_path / "run"),
        f"model.base={tiny_model_dir}",
        f"data.sources=[{train}]",
        f"eval.data_dir={sets}",
        "eval.allow_row_count_mismatch=true",
    ]  # two records a set
    return tmp_path, args


def check(args, capsys) -> tuple[int, list[str]]:
    code = main(["check", *args])
    out = capsys.readouterr()
    return code, (out.out + out.err).splitlines()


def problem_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("✗")]


def test_ready(setup, capsys):
    _, args = setup
    code, lines = check(args, capsys)
    assert code == 0, lines
    assert lines[-1] == "ready to run"
    text = "\n".join(lines)
    for check_name in ("model.base", "data.sources", "eval.benchmarks: gsm8k", "disk"):
        assert f"ok {check_name}:" in text, check_name
    assert "eval.benchmarks: math500: optional and not found" in text  # no hub, no error


def test_missing_model(setup, capsys):
    tmp, args = setup
    code, lines = check([*args, f"model.base={tmp / 'no-such-model'}"], capsys)
    assert code == 1
    [line] = problem_lines(lines)
    assert line.startswith(f"✗  model.base: {tmp / 'no-such-model'}: does not exist")
    assert "fix: model.base=/path/to/checkpoint" in line


def test_model_folder_without_config(setup, capsys):
    tmp, args = setup
    (tmp / "empty").mkdir()
    code, lines = check([*args, f"model.base={tmp / 'empty'}"], capsys)
    assert code == 1 and "no config.json: not a Hugging Face model directory" in problem_lines(lines)[0]


def test_tokenizer_without_chat_template(setup, capsys):
    """A checkpoint whose tokenizer has no chat template: one problem line naming it (the conversations and the
    eval prompts are rendered through it)."""
    tmp, args = setup
    model = shutil.copytree(next(a.split("=", 1)[1] for a in args if a.startswith("model.base=")), tmp / "bare")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    code, lines = check([*args, f"model.base={model}"], capsys)
    assert code == 1
    [line] = problem_lines(lines)
    assert line.startswith(f"✗  model.base: the tokenizer of {model} has no chat template"), line
    assert "fix: model.base=" in line


def test_missing_data_and_bad_record(setup, capsys):
    tmp, args = setup
    code, lines = check([*args, f"data.sources=[{tmp / 'missing.jsonl'}]"], capsys)
    assert code == 1
    [line] = problem_lines(lines)
    assert f"data.sources: {tmp / 'missing.jsonl'} does not exist — fix: data.sources=[" in line
    for typo in ("data/math/train", "train.json"):  # paths by the loader's rule (wdl.data.records.check_sources)
        code, lines = check([*args, f"data.sources=[{typo}]"], capsys)
        assert code == 1 and f"data.sources: {typo} does not exist" in problem_lines(lines)[0]
    code, lines = check([*args, "data.sources=[openai/gsm8k]"], capsys)  # org/name: a hub dataset
    assert "ok data.sources: openai/gsm8k: a Hugging Face dataset (read at run time)" in lines
    bad = tmp / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
        '{"messages": [{"role": "robot", "content": "hi"}]}\n'
    )
    code, lines = check([*args, f"data.sources=[{bad}]"], capsys)
    [line] = problem_lines(lines)
    assert f"data.sources: {bad}:2: messages[0].role 'robot' is unknown" in line and "data.field_map" in line


def test_missing_eval_set_names_the_restated_list(setup, capsys):
    tmp, args = setup
    shutil.rmtree(tmp / "seed_eval" / "SVAMP")
    code, lines = check(args, capsys)
    assert code == 1
    [line] = problem_lines(lines)
    assert line.startswith("✗  eval.benchmarks: svamp:")
    assert f"put it at {tmp / 'seed_eval' / 'SVAMP' / 'test.json'}" in line
    # the list to drop it: the preset's others, math500 still optional
    assert (
        "drop it: 'eval.benchmarks=[{name: aime2025}, {name: math500, optional: true}, {name: amc23}, "
        "{name: aqua}, {name: gsm8k}, {name: mawps}]'"
    ) in line
    assert "or run.eval=false" in line


def test_no_eval_data_dir(setup, capsys):
    _, args = setup
    code, lines = check([a for a in args if not a.startswith("eval.data_dir")], capsys)
    [line] = problem_lines(lines)
    assert line.startswith("✗  eval.data_dir: not set, and aime2025, amc23, aqua, gsm8k, mawps, svamp have no path")
    assert "fix: eval.data_dir=/path/to/seed_eval" in line


def test_tiny_disk(setup, capsys, monkeypatch):
    _, args = setup
    monkeypatch.setattr(wdl.preflight, "free_disk_bytes", lambda path: 1 << 20)
    code, lines = check(args, capsys)
    [line] = problem_lines(lines)
    assert line.startswith("✗  disk: the run writes up to about ")
    assert "1 MiB are free" in line and "train.keep_last=1 (now 2)" in line
    assert "drop_optimizer_state" not in line  # on already: not offered as a fix
    code, lines = check([*args, "train.keep_last=1", "train.drop_optimizer_state=false"], capsys)
    [line] = problem_lines(lines)
    assert "keep_last" not in line and "train.drop_optimizer_state=true" in line


def test_run_refuses_before_any_work(setup, capsys):
    tmp, args = setup
    assert main(["run", *args, f"model.base={tmp / 'nope'}", f"data.sources=[{tmp / 'nope.jsonl'}]"]) == 2
    err = capsys.readouterr().err
    assert "the preflight found 2 problem(s); nothing was started" in err
    assert "model.base:" in err and "data.sources:" in err
    assert not (tmp / "run").exists()


@pytest.mark.parametrize("case", ["model", "data", "eval set", "disk"])
def test_each_problem_stops_the_run_before_any_work(case, setup, capsys, monkeypatch):
    """`wdl run` with one problem of each kind: one line naming it, exit status 2, no run directory."""
    tmp, args = setup
    extra, where = (
        [],
        {"model": "model.base:", "data": "data.sources:", "eval set": "eval.benchmarks: svamp:", "disk": "disk:"}[case],
    )
    if case == "model":
        extra = [f"model.base={tmp / 'nope'}"]
    elif case == "data":
        extra = [f"data.sources=[{tmp / 'nope.jsonl'}]"]
    elif case == "eval set":
        shutil.rmtree(tmp / "seed_eval" / "SVAMP")
    else:
        monkeypatch.setattr(wdl.preflight, "free_disk_bytes", lambda path: 1 << 20)
    assert main(["run", *args, *extra]) == 2
    err = capsys.readouterr().err
    assert "the preflight found 1 problem(s); nothing was started" in err
    assert f"✗  {where}" in err, err
    assert not (tmp / "run").exists()


def test_tiny_default_checks(tmp_path, capsys):
    code, lines = check(["--out", str(tmp_path / "run")], capsys)
    assert code == 0 and "ok model.base: tiny: built offline (phase pretrain)" in lines


# ------------------------------------------------------------------------------------------ offline presets
@pytest.mark.parametrize("preset", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"])
def test_preset_eval_sets_come_from_local_files(preset, tmp_path, offline):
    sets = write_sets(tmp_path / "seed_eval")
    cfg = load_pipeline_config(
        preset,
        [
            f"data.sources=[{tmp_path / 't.jsonl'}]",
            f"eval.data_dir={sets}",
            "eval.limit=1",
            "eval.allow_row_count_mismatch=true",
        ],
    )
    ev, skipped = Pipeline(cfg, tmp_path / "run").eval_config(with_skipped=True)
    assert [b.name for b in ev.benchmarks] == ["aime2025", "amc23", "aqua", "gsm8k", "mawps", "svamp"]
    assert [b.name for b in skipped] == ["math500"]
    findings = wdl.preflight.check_eval(ev, ev.benchmarks)
    assert all(f.ok for f in findings) and all("1 problems" in f.message for f in findings)
    write_sets(sets, names=(), math500=True)  # present: evaluated
    ev = Pipeline(cfg, tmp_path / "run").eval_config()
    assert "math500" in [b.name for b in ev.benchmarks]


def test_preset_eval_runs_offline_on_the_reference_sets(tmp_path, tiny_model_dir, offline, shared_dir):
    """The qwen3-0.6b preset's eval section, as the pipeline runs it, on the seed_eval copies: every set from
    local files (math500 absent there: skipped), eval.limit applied to each."""
    from wdl.eval import evaluate_model

    seed = shared_dir / "data" / "seed_eval"
    cfg = load_pipeline_config(
        "qwen3-0.6b",
        [
            f"data.sources=[{tmp_path / 't.jsonl'}]",
            f"eval.data_dir={seed}",
            "eval.limit=2",
            "eval.backend=transformers",
            "eval.max_new_tokens=2",
            "eval.dtype=float32",
        ],
    )
    ev = Pipeline(cfg, tmp_path / "run").eval_config()
    results = evaluate_model(tiny_model_dir, ev, tmp_path / "eval")
    assert set(results) == {"aime2025", "amc23", "aqua", "gsm8k", "mawps", "svamp"}
    assert all(r["n"] == 2 for r in results.values())


def test_explicit_hub_set_offline_is_a_problem_with_the_list(tmp_path, offline):
    sets = write_sets(tmp_path / "seed_eval", names=("gsm8k",))
    cfg = load_pipeline_config(
        "qwen3-0.6b",
        [
            f"data.sources=[{tmp_path / 't.jsonl'}]",
            f"eval.data_dir={sets}",
            "eval.benchmarks=[{name: gsm8k}, {name: math500}]",
            "eval.allow_row_count_mismatch=true",
        ],
    )
    ev = Pipeline(cfg, tmp_path / "run").eval_config()
    bad = [f for f in wdl.preflight.check_eval(ev, ev.benchmarks) if not f.ok]
    assert [f.check for f in bad] == ["eval.benchmarks: math500"]
    assert "drop it: 'eval.benchmarks=[{name: gsm8k}]'" in bad[0].fix


# ------------------------------------------------------------------------------------------------ progress
def test_progress_lines_carry_rate_and_eta():
    stream = io.StringIO()
    with Progress("scoring base", total=10, unit="samples", interval=0, stream=stream) as bar:
        for _ in range(5):
            bar.update(2)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("scoring base: 2/10 samples (20%), ") and "samples/s" in lines[0]
    assert "ETA" in lines[0] and "elapsed" in lines[0]
    assert lines[-1].startswith("scoring base: 10 samples in ")
    assert len(lines) == 5  # updates 1-4 (the last update is the closing line)
    quiet = io.StringIO()
    Progress("nothing", total=3, stream=quiet).close()  # nothing counted (a cached map): nothing printed
    assert quiet.getvalue() == ""


# ------------------------------------------------------------------------------------------------ estimates
def test_readme_tables_are_the_footprint_estimates():
    """README's memory and disk tables are what wdl/footprint.py computes for the presets (regenerate them with
    `python -m wdl.footprint` when a preset or the formula changes)."""
    from pipeline_helpers import REPO

    from wdl.footprint import preset_tables

    readme = (REPO / "README.md").read_text()
    start = readme.index("<!-- footprint tables: generated by `python -m wdl.footprint` -->\n")
    block = readme[start : readme.index("<!-- end of footprint tables -->")].split("\n", 1)[1]
    assert block == preset_tables()


def test_estimates_match_the_presets_comments():
    """Every "about N GiB" in a Qwen3 preset's comment is a cell of that preset's rows in the README's tables
    (the same estimates, wdl/footprint.py), and the comment says it is an estimate."""
    import re

    from pipeline_helpers import REPO

    from wdl.footprint import preset_tables, qwen3_size

    rows = {}
    for line in preset_tables().splitlines():
        if line.startswith("| qwen3-"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], set()).update(re.findall(r"([\d.]+) (?:GiB|\+)", " ".join(cells[1:])))
    for preset, numbers in rows.items():
        head = "".join(
            line
            for line in (REPO / "wdl" / "presets" / f"{preset}.yaml").read_text().splitlines(True)
            if line.startswith("#")
        )
        stated = re.findall(r"about ([\d.]+) GiB", head)
        assert stated and set(stated) <= numbers, (preset, stated, sorted(numbers))
        assert "estimate" in head.lower(), preset
    # the 4b preset's "~120 GiB of weights, gradients and AdamW states" (16 bytes per parameter, two models)
    assert round(2 * 16 * qwen3_size("qwen3-4b").params / 2**30) == 120
    assert round(2 * 16 * qwen3_size("qwen3-8b").params / 2**30) == 244  # "~244 GiB of training state"


def test_keep_last_is_per_phase(tmp_path):
    """`sft.keep_last` overrides the shared `train.keep_last` for SFT alone; the disk estimate follows it."""
    from wdl.footprint import qwen3_size, training_phase_disk

    cfg = load_pipeline_config("qwen3-4b", ["sft.keep_last=1", "joint.keep_last=3"], runnable=False)
    assert (cfg.sft.keep_last, cfg.joint.keep_last, cfg.pretrain.keep_last) == (1, 3, 2)
    size = qwen3_size("qwen3-4b")
    one, two = (training_phase_disk("sft", size, None, c) for c in (cfg.sft, dataclasses.replace(cfg.sft, keep_last=2)))
    assert two.while_training - one.while_training == 12 * size.params  # one full checkpoint more


def test_train_with_the_eval_system_prompt(tmp_path, tiny_model_dir):
    """data.system_prompt=eval: the training conversations get the system prompt the models are evaluated with
    (the tokenized samples start with it); by default they have none."""
    from transformers import AutoTokenizer

    from wdl.eval.config import REFERENCE_SYSTEM_PROMPT

    train = tmp_path / "t.jsonl"
    synthetic.write_chat_jsonl(train, synthetic.make_splits(2, 0, 0, seed=1).train)
    common = [f"data.sources=[{train}]", f"model.base={tiny_model_dir}", "data.max_length=4096"]
    cfg = load_pipeline_config("qwen3-0.6b", [*common, "data.system_prompt=eval"])
    pipe = Pipeline(cfg, tmp_path / "run")
    assert pipe.data_config("train").system_prompt == REFERENCE_SYSTEM_PROMPT == cfg.eval.system_prompt_text
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.decode(pipe.dataset("train")[0]["input_ids"])
    assert text.startswith(f"<|im_start|>system\n{REFERENCE_SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"), text
    plain = Pipeline(load_pipeline_config("qwen3-0.6b", common), tmp_path / "run2")
    assert plain.data_config("train").system_prompt is None  # the default: none
    assert tok.decode(plain.dataset("train")[0]["input_ids"]).startswith("<|im_start|>user\n")


def test_config_prints_a_preset_without_data_and_version(capsys):
    assert main(["config", "qwen3-0.6b"]) == 0
    out = capsys.readouterr().out
    assert "base: Qwen/Qwen3-0.6B-Base" in out and "sources: []" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("wdl ")


def test_a_check_across_sections_names_the_file_once(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "r"), "data.sources=[x.jsonl]"]) == 2
    err = capsys.readouterr().err
    assert "tiny.yaml: data.sources: must be empty when synthetic.enabled is true" in err and ": :" not in err


def test_gpu_memory_estimates_against_the_device(monkeypatch):
    """Where a GPU is present each training phase's estimate is compared with its memory (here an 80 GiB device,
    simulated): the qwen3-4b joint pair on one GPU does not fit, its SFT does."""
    import dataclasses
    from types import SimpleNamespace

    import torch

    from wdl.footprint import qwen3_size

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: SimpleNamespace(total_memory=80 << 30))
    cfg = load_pipeline_config("qwen3-4b", runnable=False)
    size = qwen3_size("qwen3-4b")
    plans = [wdl.preflight.PhasePlan("sft", cfg.sft, size), wdl.preflight.PhasePlan("joint", cfg.joint, size, size)]
    sft, joint = wdl.preflight.check_gpu_memory(plans, size, 16384, cfg.data.tokens_per_micro_batch, 1)
    assert sft.ok and "sft needs about" in sft.message
    assert not joint.ok and "joint needs about 150" in joint.message and "FSDP2" in joint.fix
    fsdp = dataclasses.replace(cfg.joint, backend="fsdp2")
    [ok] = wdl.preflight.check_gpu_memory(
        [wdl.preflight.PhasePlan("joint", fsdp, size, size)], None, 0, cfg.data.tokens_per_micro_batch, 8
    )
    assert ok.ok  # 8 GPUs with FSDP2
