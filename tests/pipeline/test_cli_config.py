"""The pipeline config (presets, reference hyperparameters), the CLI's errors before any work, --help, and the
refusal to resume a run directory with a different config."""

from __future__ import annotations

import pytest

from wdl.cli import main
from wdl.config import dump_yaml, load_pipeline_config, preset_names
from wdl.pipeline import Pipeline
from wdl.run_dir import PipelineError

DATA = "data.sources=[train.jsonl]"


def test_presets_exist():
    assert {"tiny", "qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"} <= set(preset_names())


@pytest.mark.parametrize("preset", ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b"])
def test_qwen3_presets_carry_reference_hyperparameters(preset):
    cfg = load_pipeline_config(preset, [DATA])
    assert cfg.model.base == f"Qwen/Qwen3-{preset.split('-')[1].upper()}-Base"
    for phase in (cfg.sft, cfg.joint):
        assert (phase.lr, phase.warmup_ratio, phase.max_grad_norm, phase.epochs, phase.dtype) == (
            1e-5, 0.1, 1.0, 1.0, "bf16")
    assert cfg.joint.lam == 0.5 and cfg.joint.freeze_weak is False
    assert cfg.data.max_length == 4096 and cfg.data.global_batch_size == 512
    assert cfg.data.loss_on == "completion"
    s = cfg.sampling
    assert (s.scheme, s.alpha, s.beta, s.gamma) == ("v1", 0.1, 0.8, 0.1)
    assert cfg.synthetic.enabled is False


def test_real_presets_need_training_data():
    with pytest.raises(ValueError, match="data.sources: list your training files"):
        load_pipeline_config("qwen3-4b")


def test_tiny_is_the_default_and_round_trips(tmp_path):
    cfg = load_pipeline_config()
    assert cfg.model.is_tiny and cfg.synthetic.enabled and cfg.model.tiny.head_dim == 64
    assert cfg == load_pipeline_config("tiny")
    (tmp_path / "c.yaml").write_text(dump_yaml(cfg))
    assert load_pipeline_config(tmp_path / "c.yaml") == cfg
    # the shared train section reaches every phase; a phase's own value wins
    cfg = load_pipeline_config(None, ["train.max_grad_norm=0.5", "joint.max_grad_norm=2"])
    assert (cfg.pretrain.max_grad_norm, cfg.sft.max_grad_norm, cfg.joint.max_grad_norm) == (0.5, 0.5, 2.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sft.lrr=1"], "override 'sft.lrr=1': sft.lrr: unknown key; did you mean 'lr'?"),
        (["joint.lam=1.5"], "override 'joint.lam=1.5': joint.lam: must be in [0, 1], got 1.5"),
        (["sampling.dedup=maybe"], "sampling.dedup: expected true or false, got 'maybe'"),
        (["sft.epochs=many"], "sft.epochs: expected a number, got 'many'"),
        (["missing-config.yaml"], "config 'missing-config.yaml': no such file and no such preset"),
        (["synthetic.enabled=false"], "synthetic.enabled: the tiny base is built from the synthetic corpus"),
        (["qwen3-0.6b"], "data.sources: list your training files"),
    ],
)
def test_bad_configs_fail_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists()  # nothing was started


def test_bad_config_file_names_file_and_key(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: tiny\nsft:\n  warmup_ratio: 2\n")
    assert main(["config", str(bad)]) == 2
    assert "bad.yaml: sft.warmup_ratio: must be in [0, 1), got 2.0" in capsys.readouterr().err
    bad.write_text("sampling:\n  scheme: v7\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "bad.yaml: sampling.scheme: must be one of 'v1', 'v2', 'brownboost', got 'v7'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["run", "score", "sft", "weights", "joint", "extract", "config"])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: wdl " + command in capsys.readouterr().out


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "qwen3-1.7b", DATA, "joint.lam=0.42"]) == 0
    text = capsys.readouterr().out
    assert "lam: 0.42" in text and "Qwen/Qwen3-1.7B-Base" in text


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "run"
    Pipeline(load_pipeline_config(None, ["sft.lr=0.001"]), out).prepare_run_dir()
    assert (out / "config.yaml").is_file()
    # nothing completed yet (a start that failed, e.g. on a bad record): the config may still change
    Pipeline(load_pipeline_config(None, ["sft.lr=0.003"]), out).prepare_run_dir()
    assert "lr: 0.003" in (out / "config.yaml").read_text()
    Pipeline(load_pipeline_config(None, ["sft.lr=0.001"]), out).prepare_run_dir()
    (out / "work" / "sft" / "step-2").mkdir(parents=True)  # from now on a result depends on the config
    # keys that cannot change an artifact may differ (eval settings, logging, the optional baseline)
    Pipeline(load_pipeline_config(None, ["sft.lr=0.001", "sft.log_every=5", "run.sft_continued=false"]),
             out).prepare_run_dir()
    with pytest.raises(PipelineError, match=r"sft.lr: 0.001 -> 0.002"):
        Pipeline(load_pipeline_config(None, ["sft.lr=0.002"]), out).prepare_run_dir()
    with pytest.raises(PipelineError, match="sampling.scheme: 'v1' -> 'v2'"):
        Pipeline(load_pipeline_config(None, ["sft.lr=0.001", "sampling.scheme=v2"]), out).prepare_run_dir()


def test_overrides_may_follow_options(capsys):
    # the launch scripts call `wdl run CONFIG --out DIR key=value ...`
    assert main(["config", "qwen3-0.6b", "--out", "somewhere", DATA, "joint.lam=0.3"]) == 0
    text = capsys.readouterr().out
    assert "lam: 0.3" in text and "out: somewhere" in text
    with pytest.raises(SystemExit):
        main(["config", "tiny", "--out", "x", "--bogus"])
