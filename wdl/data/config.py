"""DataConfig: where the training records come from, how they are tokenized, and how steps are batched."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from wdl.configlib import check_choices

_LIMITS = {"max_length": 2**20, "tokens_per_micro_batch": 2**24, "global_batch_size": 2**24,
           "pad_to_multiple": 2**16}


@dataclass
class DataConfig:
    # Local .jsonl / .json files, or Hugging Face dataset names ("name" or "name:config", read with `split`).
    sources: list[str] = field(default_factory=list)
    split: str = "train"
    format: Literal["auto", "messages", "instruction", "qa", "prompt_completion", "text"] = "auto"  # auto: per record
    field_map: dict[str, str] = field(default_factory=dict)  # our field name -> the source's field name
    system_prompt: str | None = None  # prepended as a system turn when a conversation has none
    enable_thinking: bool = True  # passed to the chat template
    # completion: the assistant tokens only; all: every token (plain-text pretraining)
    loss_on: Literal["completion", "all"] = "completion"
    max_length: int = 4096
    overlong: Literal["truncate", "drop"] = "truncate"
    on_bad_record: Literal["error", "skip"] = "error"  # "skip": count and report malformed records instead of failing
    tokens_per_micro_batch: int = 8192  # packing budget of one micro-batch (>= max_length)
    global_batch_size: int = 512  # samples per optimizer step, over all ranks
    shuffle: bool = True
    seed: int = 42
    drop_last: bool = False  # drop a last partial step of each epoch
    pad_to_multiple: int = 64  # micro-batch lengths are rounded up to this (kernel-friendly shapes)
    cache_dir: str | None = None  # datasets' cache for parsed records and tokenization (None: datasets' default)
    num_proc: int | None = None  # processes for tokenization

    def __post_init__(self) -> None:
        if isinstance(self.sources, str):
            self.sources = [self.sources]
        if not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(f"data.sources: a list of file paths or dataset names, got {self.sources!r}")
        check_choices(self, prefix="data.")
        for name, most in _LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ValueError(f"data.{name}: must be an integer in [1, {most}], got {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise ValueError(f"data.seed: must be an integer in [0, 2**32), got {self.seed!r}")
        if self.max_length < 2:
            raise ValueError(f"data.max_length: must be at least 2 (one input and one target), got {self.max_length}")
        if self.tokens_per_micro_batch < self.max_length:
            raise ValueError(f"data.tokens_per_micro_batch ({self.tokens_per_micro_batch}) must be >= data.max_length "
                             f"({self.max_length}): a micro-batch must hold the longest sample")
        if not isinstance(self.field_map, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                           for k, v in self.field_map.items()):
            raise ValueError(f"data.field_map: a mapping of field names to field names, got {self.field_map!r}")
        if self.num_proc is not None and (not isinstance(self.num_proc, int) or self.num_proc < 1):
            raise ValueError(f"data.num_proc: a positive integer or null, got {self.num_proc!r}")
