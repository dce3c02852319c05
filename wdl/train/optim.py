"""AdamW and the learning-rate schedule (a pure function of the step: resuming needs no scheduler state)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters; no weight decay on biases and norm weights (1-D tensors), as usual for LMs."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_adamw(model: nn.Module, cfg: TrainConfig, *, fused: bool | None = None) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    if fused is None:
        fused = any(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


@dataclass(frozen=True)
class LRSchedule:
    """lr(step) for optimizer steps 1..total: linear warm-up, then cosine/linear decay to min_lr_ratio * lr."""

    lr: float
    total_steps: int
    warmup_steps: int
    kind: str = "cosine"
    min_lr_ratio: float = 0.0

    @classmethod
    def from_config(cls, cfg: TrainConfig, total_steps: int) -> "LRSchedule":
        warmup = int(math.ceil(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio > 0 else 0
        return cls(cfg.lr, total_steps, min(warmup, total_steps), cfg.schedule, cfg.min_lr_ratio)

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return self.lr * step / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        decay_steps = max(self.total_steps - self.warmup_steps, 1)
        # step warmup+1 gets the full lr, the last step the last value before min_lr (no wasted zero-lr step)
        progress = min(max(step - self.warmup_steps - 1, 0) / decay_steps, 1.0)
        if self.kind == "cosine":
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            factor = 1.0 - progress
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
