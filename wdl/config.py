"""Configuration: YAML files -> nested dataclasses, validated before any work starts.

One mechanism for every entry point:
- a config is a YAML mapping whose sections are the fields of `PipelineConfig` (each section a dataclass
  owned by its module and validated in its `__post_init__`);
- `extends: <preset name or path>` at the top of a file starts from another file (deep merge, the child wins);
- `key.path=value` overrides from the command line, each value parsed with YAML's scalar rules
  (`sft.lr=2e-5`, `run.sft_continued=true`, `data.sources=[a.jsonl,b.jsonl]`);
- the `train:` section holds defaults shared by every training phase (pretrain, sft, joint); a phase's own
  section wins over it;
- presets are the YAML files in `wdl/presets/`, selected by name (`tiny` is the embedded default).

Errors are `ValueError`s naming where the value came from and its key path, e.g.
`my.yaml: sft.lr: must be > 0, got -1` or `override 'sft.lr=-1': sft.lr: ...`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wdl.configlib import (  # noqa: F401 - re-exported: the config API lives at wdl.config
    PRESETS_DIR, apply_overrides, build, check, check_choices, deep_merge, diff, dump_yaml, flatten, load,
    parse_override, preset_names, read_yaml, resolve_source, to_dict,
)
from wdl.data import DataConfig
from wdl.eval import EvalConfig
from wdl.train import TrainConfig

TRAIN_PHASES = ("pretrain", "sft", "joint")  # sections that receive the shared `train:` defaults
_SHARED_TRAIN = "train"


# ------------------------------------------------------------------------------ the pipeline's own sections
_TINY_LIMITS = {"vocab_size": 65536, "hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 64,
                "num_attention_heads": 64, "num_key_value_heads": 64, "head_dim": 256,
                "max_position_embeddings": 131072}
MAX_SYNTHETIC = 10**7  # problems per synthetic split
MAX_DRAWS = 10**9  # sampling draws (one int64 each)


@dataclass
class TinyModelConfig:
    """Shape of the tiny Qwen3 built from scratch when `model.base: tiny` (head_dim 64 so vLLM serves it)."""

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 64
    max_position_embeddings: int = 2048
    seed: int = 0  # weight initialisation

    def __post_init__(self):
        for name, most in _TINY_LIMITS.items():
            value = getattr(self, name)
            check(1 <= value <= most, name, f"must be in [1, {most}] (the tiny model is for CPU runs), got {value}")
        check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        check(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
               f"must divide num_attention_heads ({self.num_attention_heads}), got {self.num_key_value_heads}")


@dataclass
class ModelConfig:
    """The base model M0: `tiny` (built offline from the synthetic corpus and pretrained briefly, phase 0),
    or a Hugging Face model name / local checkpoint directory (e.g. Qwen/Qwen3-4B-Base)."""

    base: str = "tiny"
    tokenizer: str | None = None  # defaults to the base model's own tokenizer
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def __post_init__(self):
        check(bool(self.base.strip()), "base", "must be 'tiny' or a model name/path, got an empty string")

    @property
    def is_tiny(self) -> bool:
        return self.base == "tiny"


@dataclass
class SyntheticConfig:
    """The built-in synthetic math data (wdl.synthetic). When enabled the pipeline writes the splits into
    `DIR/data/` and uses them as the training data and as an eval benchmark named `synthetic`."""

    enabled: bool = False
    n_train: int = 2000
    n_eval: int = 200
    n_pretrain: int = 2000  # plain-text problems for pretraining the tiny base
    seed: int = 0

    def __post_init__(self):
        check(1 <= self.n_train <= MAX_SYNTHETIC, "n_train", f"must be in [1, {MAX_SYNTHETIC}], got {self.n_train}")
        check(0 <= self.n_eval <= MAX_SYNTHETIC, "n_eval", f"must be in [0, {MAX_SYNTHETIC}], got {self.n_eval}")
        check(0 <= self.n_pretrain <= MAX_SYNTHETIC, "n_pretrain",
              f"must be in [0, {MAX_SYNTHETIC}], got {self.n_pretrain}")
        check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")


@dataclass
class ScoringConfig:
    """Per-sample entropy / NLL / margin of a model over the training set (forward-only fused path)."""

    tokens_per_micro_batch: int = 16384
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on the CPU

    def __post_init__(self):
        check_choices(self)
        check(1 <= self.tokens_per_micro_batch <= 2**24, "tokens_per_micro_batch",
              f"must be in [1, 2**24], got {self.tokens_per_micro_batch}")


@dataclass
class BrownBoostConfig:
    """Extra inputs of the reference's BrownBoost-style weights (wdl.sampling.brownboost_weights)."""

    third_model: str | None = None  # a later model whose entropies are the third column (entropy_2)
    easy_quantile: float = 0.2
    hard_quantile: float = 0.8
    patience: int = 2
    easy_patience: int = 2
    lambda_time: float = 1.0
    lambda_easy: float = 1.0

    def __post_init__(self):
        check(0.0 <= self.easy_quantile < self.hard_quantile <= 1.0, "hard_quantile",
               f"need 0 <= easy_quantile < hard_quantile <= 1, got {self.easy_quantile} and {self.hard_quantile}")
        check(self.patience >= 0, "patience", f"must be >= 0, got {self.patience}")
        check(self.easy_patience >= 0, "easy_patience", f"must be >= 0, got {self.easy_patience}")
        for name in ("lambda_time", "lambda_easy"):
            value = getattr(self, name)
            check(value >= 0 and math.isfinite(value), name, f"must be a finite number >= 0, got {value}")


@dataclass
class SamplingConfig:
    """Sampling weights and the resampled training set of the joint phase (WD-DS)."""

    scheme: Literal["v1", "v2", "brownboost"] = "v1"
    alpha: float = 0.1
    beta: float = 0.8
    gamma: float = 0.1
    multiplier: float = 1.0  # draws = round(multiplier * |D|), with replacement (the reference: 1.0)
    size: int | None = None  # an absolute number of draws instead of multiplier * |D|
    dedup: bool = True  # the paper removes duplicate draws (fewer steps); the reference code keeps them
    seed: int = 42
    brownboost: BrownBoostConfig = field(default_factory=BrownBoostConfig)

    def __post_init__(self):
        check_choices(self)
        for name in ("alpha", "beta", "gamma"):
            v = getattr(self, name)
            check(v >= 0 and math.isfinite(v), name, f"must be a finite number >= 0, got {v}")
        check(self.alpha + self.beta + self.gamma > 0, "beta", "alpha, beta and gamma cannot all be 0")
        check(0 < self.multiplier <= 1000, "multiplier", f"must be in (0, 1000] (draws per sample), got "
              f"{self.multiplier}")
        check(self.size is None or 1 <= self.size <= MAX_DRAWS, "size",
              f"must be in [1, {MAX_DRAWS}] or null, got {self.size}")
        check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        if self.scheme == "brownboost":
            check(self.brownboost.third_model is not None, "scheme",
                   "'brownboost' needs sampling.brownboost.third_model (a later model to score: the "
                   "third entropy column)")


@dataclass
class RunConfig:
    """What to run and where."""

    out: str = "runs/wmss"  # `wdl run --out DIR` overrides it
    sft_continued: bool = False  # also train the fair baseline: M1 on the resampled data, no mixing
    eval: bool = True  # run the eval phase and write the report's accuracy table
    eval_base: bool = True  # evaluate the base model too (the weak starting point)

    def __post_init__(self):
        check(bool(self.out.strip()), "out", "must be a directory path, got an empty string")


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass
class PipelineConfig:
    """Everything `wdl run` needs. Sections: model, synthetic, data, pretrain/sft/joint (one TrainConfig each,
    with shared defaults in `train:`), scoring, sampling, eval, run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)  # tiny base only
    sft: TrainConfig = field(default_factory=TrainConfig)
    joint: TrainConfig = field(default_factory=TrainConfig)  # also sft_continued
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.synthetic.enabled and self.data.sources:
            raise ValueError(
                "data.sources: must be empty when synthetic.enabled is true (the pipeline trains on the synthetic "
                "split); set synthetic.enabled=false to train on your files"
            )
        if self.model.is_tiny and not self.synthetic.enabled:
            raise ValueError("synthetic.enabled: the tiny base is built from the synthetic corpus; enable it or "
                             "set model.base to a real model")


    def check_runnable(self) -> None:
        """What a run needs beyond a consistent config: training data (`wdl config` prints a preset without)."""
        if not self.synthetic.enabled and not self.data.sources:
            raise ValueError("data.sources: list your training files (chat JSONL with messages/idx), e.g. "
                             "data.sources=[/data/train.jsonl]")


def load_pipeline_config(source: str | Path | None = None, overrides: Iterable[str] = (), *,
                         runnable: bool = True) -> PipelineConfig:
    """The pipeline's config from a YAML file or preset (default: `tiny`) plus `key=value` overrides;
    `runnable=False` accepts a config without training data (to print or inspect a preset)."""
    cfg = load(PipelineConfig, source, overrides, default="tiny", shared_sections={_SHARED_TRAIN: TRAIN_PHASES})
    if runnable:
        cfg.check_runnable()
    return cfg
