"""The YAML -> dataclass mechanism: types, unknown keys, overrides, extends, shared sections, error origins."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from wdl import config as C


@dataclass
class Inner:
    lr: float = 1e-5
    steps: int = 10
    name: str = "x"
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    mode: Literal["a", "b"] = "a"
    maybe: int | None = None

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@dataclass
class Top:
    one: Inner = field(default_factory=Inner)
    two: Inner = field(default_factory=Inner)
    sampling: C.SamplingConfig = field(default_factory=C.SamplingConfig)


def _load(tmp_path, text, overrides=(), name="cfg.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return C.load(Top, p, overrides, shared_sections={"shared": ("one", "two")})


def test_types_and_yaml_float_quirk(tmp_path):
    cfg = _load(tmp_path, "one:\n  lr: 1e-4\n  steps: 5\n  tags: [a, b]\n  mode: b\n  maybe: 3\n")
    assert cfg.one == Inner(lr=1e-4, steps=5, tags=["a", "b"], mode="b", maybe=3)
    assert isinstance(cfg.one.lr, float)  # YAML 1.1 reads 1e-4 as a string; the loader accepts it for floats
    assert cfg.two == Inner()


def test_overrides_parse_yaml_scalars(tmp_path):
    cfg = _load(tmp_path, "", ["one.lr=2e-5", "one.flag=true", "one.tags=[p, q]", "two.maybe=null", "two.name=7b"])
    assert cfg.one.lr == 2e-5 and cfg.one.flag is True and cfg.one.tags == ["p", "q"]
    assert cfg.two.maybe is None and cfg.two.name == "7b"


def test_shared_section_and_precedence(tmp_path):
    cfg = _load(tmp_path, "shared:\n  lr: 0.5\n  steps: 3\ntwo:\n  lr: 0.25\n")
    assert (cfg.one.lr, cfg.one.steps) == (0.5, 3)
    assert (cfg.two.lr, cfg.two.steps) == (0.25, 3)  # the phase's own value wins


def test_extends_preset_chain(tmp_path):
    (tmp_path / "base.yaml").write_text("one:\n  steps: 7\n  name: base\n")
    (tmp_path / "mid.yaml").write_text("extends: base.yaml\none:\n  name: mid\n")
    cfg = _load(tmp_path, "extends: mid.yaml\none:\n  lr: 0.1\n")
    assert (cfg.one.steps, cfg.one.name, cfg.one.lr) == (7, "mid", 0.1)
    (tmp_path / "loop.yaml").write_text("extends: cfg.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        _load(tmp_path, "extends: loop.yaml\n")


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("one:\n  lrr: 1\n", (), "cfg.yaml: one.lrr: unknown key; did you mean 'lr'?"),
        ("three: {}\n", (), "cfg.yaml: three: unknown key"),
        ("one:\n  steps: ten\n", (), "cfg.yaml: one.steps: expected an integer, got 'ten'"),
        ("one:\n  steps: 2.5\n", (), "cfg.yaml: one.steps: expected an integer, got 2.5"),
        ("one:\n  flag: 1\n", (), "cfg.yaml: one.flag: expected true or false, got 1"),
        ("one:\n  lr: -1\n", (), "cfg.yaml: one.lr: must be > 0, got -1.0"),
        ("one:\n  steps: 0\n", (), "cfg.yaml: one.steps: must be >= 1, got 0"),
        ("one:\n  mode: c\n", (), "cfg.yaml: one.mode: must be one of 'a', 'b', got 'c'"),
        ("one: 3\n", (), "cfg.yaml: one: expected a section (mapping), got 3"),
        ("one:\n  tags: a\n", (), "cfg.yaml: one.tags: expected a list, got 'a'"),
        ("", ["one.lr=-3"], "override 'one.lr=-3': one.lr: must be > 0, got -3.0"),
        ("", ["one.lr"], "override 'one.lr': expected key.path=value"),
        ("shared:\n  lr: -1\n", (), "cfg.yaml: shared.lr: must be > 0, got -1.0"),
        ("", ["shared.steps=0"], "override 'shared.steps=0': shared.steps: must be >= 1"),
        ("sampling:\n  alpha: -0.1\n", (), "cfg.yaml: sampling.alpha: must be a finite number >= 0"),
        ("", ["sampling.scheme=brownboost"], "override 'sampling.scheme=brownboost': sampling.scheme: 'brownboost'"),
        ("one:\n  lr: [1,\n", (), "cfg.yaml:3: not valid YAML"),
        ("- 1\n- 2\n", (), "cfg.yaml: a config file must be a YAML mapping"),
    ],
)
def test_errors_name_origin_and_key_path(tmp_path, text, overrides, message):
    with pytest.raises(ValueError) as e:
        _load(tmp_path, text, overrides)
    assert message in str(e.value)


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="no such file and no such preset"):
        C.load(Top, tmp_path / "absent.yaml")
    with pytest.raises(ValueError, match="no such file and no such preset"):
        C.load(Top, "qwen9-huge")


def test_round_trip_and_diff(tmp_path):
    cfg = _load(tmp_path, "one:\n  tags: [a]\n  lr: 0.5\n")
    dumped = tmp_path / "dump.yaml"
    dumped.write_text(C.dump_yaml(cfg))
    assert C.load(Top, dumped) == cfg
    other = _load(tmp_path, "one:\n  tags: [a]\n  lr: 0.25\n", name="other.yaml")
    assert C.diff(C.to_dict(cfg), C.to_dict(other)) == [("one.lr", 0.5, 0.25)]
