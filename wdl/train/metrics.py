"""Per-step training metrics: model FLOPs and MFU, memory, and the log sinks (JSONL, TensorBoard, progress bar).

MFU follows the PaLM convention: model FLOPs (6 per parameter per token for a trained matmul, 2 for a forward-only
one, plus attention's 12 * layers * attention width * sequence length per token) over the device's dense bf16
peak. Activation-checkpointing recomputation is not counted (it is hardware FLOPs, not model FLOPs).
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PretrainedConfig

GIB = float(1 << 30)

# Dense (non-sparse) bf16 tensor-core peaks in TFLOP/s from the vendors' data sheets, matched against
# torch.cuda.get_device_name() in order (more specific names first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("gh200", 989.4),
    ("h200", 989.4),
    ("h800", 989.4),
    ("h100", 989.4),  # SXM5 (reported as "NVIDIA H100 80GB HBM3")
    ("a100", 312.0),
    ("a800", 312.0),
    ("l40s", 362.05),
    ("l40", 181.05),
    ("l4", 121.0),
    ("b200", 2250.0),
    ("mi300x", 1307.4),
)


def peak_bf16_flops(device: torch.device) -> float | None:
    """FLOP/s of one device, or None where unknown (the CPU, unlisted GPUs): then no MFU is reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return tflops * 1e12
    return None


class FlopCounter:
    """Model FLOPs of one step of a model given its config, for the sequences actually in the batch."""

    def __init__(self, config: PretrainedConfig, *, trainable: bool):
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        h, v, n_layers = text.hidden_size, text.vocab_size, text.num_hidden_layers
        head_dim = getattr(text, "head_dim", None) or h // text.num_attention_heads
        n_kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        inter = text.intermediate_size
        attn = h * head_dim * (2 * text.num_attention_heads + 2 * n_kv)  # q, o and k, v projections
        mlp = 3 * h * inter  # gate, up, down
        self.matmul_params = n_layers * (attn + mlp) + v * h  # blocks + lm_head (the embedding lookup is free)
        self.attn_width = text.num_attention_heads * head_dim
        self.n_layers = n_layers
        self.mult = 3 if trainable else 1  # forward + backward (2x forward) vs forward only

    def step_flops(self, n_tokens: int, sum_sq_seq_len: int) -> float:
        fwd = 2.0 * self.matmul_params * n_tokens + 4.0 * self.n_layers * self.attn_width * sum_sq_seq_len
        return self.mult * fwd


def sequence_lengths(position_ids: torch.Tensor, sample_idx: torch.Tensor | None = None) -> torch.Tensor:
    """Lengths of the packed sequences of a [B, T] micro-batch (a sequence starts where position_ids == 0);
    padding (sample_idx == -1) is left out."""
    starts = position_ids == 0
    row_offset = torch.arange(position_ids.shape[0])[:, None] * (position_ids.shape[1] + 1)
    seg = torch.cumsum(starts.long(), dim=1) + row_offset
    if sample_idx is not None:
        keep = sample_idx >= 0
        seg = seg[keep]
    return torch.unique(seg.reshape(-1), return_counts=True)[1]


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return None


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def host_peak_rss_gib() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1 << 30) if sys.platform == "darwin" else rss / (1 << 20)  # bytes on macOS, KiB on Linux


class MetricsSink:
    """Rank 0's outputs: one JSON object per optimizer step appended to `log_path`, TensorBoard scalars,
    a progress bar. Other ranks get a sink that does nothing."""

    def __init__(self, *, name: str, log_path: Path, tensorboard_dir: Path | None, total_steps: int,
                 start_step: int, log_every: int, enabled: bool):
        self.enabled = enabled
        self.name = name
        self.log_every = log_every
        self.total_steps = total_steps
        self._file = None
        self._tb = None
        self._bar = None
        self._start_step, self._t0 = start_step, time.perf_counter()
        if not enabled:
            return
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(log_path, "a", encoding="utf-8")
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # only when enabled: the import takes seconds

            self._tb = SummaryWriter(log_dir=str(tensorboard_dir))
        self._bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True,
                         disable=None)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(row, allow_nan=True) + "\n")
        self._file.flush()
        step = row["step"]
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{self.name}/{k}", v, step)
        if self._bar is not None:
            self._bar.update(1)
            if step % self.log_every == 0:
                shown = {k: row[k] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")
                         if row.get(k) is not None}
                if self._bar.disable:  # not a terminal (cluster logs, CI): one plain line instead of a bar
                    text = " ".join(f"{k} {v:.4g}" for k, v in shown.items())
                    elapsed = time.perf_counter() - self._t0
                    done = step - self._start_step
                    eta = tqdm.format_interval(elapsed / done * (self.total_steps - step)) if done > 0 else "?"
                    print(f"{self.name} step {step}/{self.total_steps} {text} elapsed "
                          f"{tqdm.format_interval(elapsed)} ETA {eta}", flush=True)
                else:
                    self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def message(self, text: str) -> None:
        if self.enabled:
            (self._bar.write if self._bar is not None else print)(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
        self.enabled = False
