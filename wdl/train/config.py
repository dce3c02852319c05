"""TrainConfig: every knob of one training phase, validated before any work starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from wdl.configlib import check, check_choices

MAX_EPOCHS = 10_000
MAX_STEPS = 10**9


@dataclass
class TrainConfig:
    """One training phase (SFT, joint, continued SFT, pretraining): optimizer, schedule, precision, parallelism,
    checkpointing and logging. SFT is the joint step without a weak model, so the same section serves all."""

    # optimizer (AdamW; fused on CUDA)
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # clip the global gradient norm to this; 0 disables clipping (norm still logged)
    # schedule: linear warm-up over warmup_ratio of the steps, then cosine / linear decay to min_lr_ratio * lr
    warmup_ratio: float = 0.1
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    min_lr_ratio: float = 0.0
    # length: epochs over the data (fractions allowed), or max_steps optimizer steps when set
    epochs: float = 1.0
    max_steps: int | None = None
    seed: int = 42
    # precision: bf16 = bf16 compute with fp32 master weights and optimizer states; auto = bf16 on CUDA else fp32
    dtype: Literal["auto", "bf16", "fp32"] = "auto"
    # the joint loss
    lam: float = 0.5  # z = lam * z_strong + (1 - lam) * z_weak
    freeze_weak: bool = False  # the paper's main setting trains both
    kernel_impl: Literal["auto", "triton", "torch"] = "auto"  # the fused loss: Triton on CUDA, chunked torch
    kernel_mode: Literal["lean", "fast"] = "lean"  # lean: recompute in the backward; fast: gradients in the forward
    # parallelism
    backend: Literal["single", "fsdp2", "deepspeed"] = "single"
    zero_stage: int = 3  # deepspeed only: 2 or 3
    offload_optimizer: bool = False  # deepspeed only: optimizer states and step on the CPU (ZeRO-Offload)
    fsdp_cpu_offload: bool = False  # fsdp2 only: parameters, gradients and optimizer states on the CPU
    activation_checkpointing: bool = False
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = "auto"
    use_liger: bool = False  # Liger-Kernel RMSNorm/RoPE/SwiGLU in Qwen3 blocks (CUDA + liger-kernel only)
    # robustness
    nan_policy: Literal["stop", "skip"] = "stop"  # non-finite loss/gradients: raise, or skip the update and count
    deterministic: bool = False  # torch.use_deterministic_algorithms (bitwise-reproducible runs; slower on GPU)
    # checkpoints (in work_dir) and logs
    checkpoint_every: int = 100  # optimizer steps; the last step is always checkpointed
    keep_last: int = 2
    drop_optimizer_state: bool = True  # once the phase is complete and its export verifies, its checkpoints keep
    # the model weights only (AdamW's moments are 2/3 of a checkpoint; a finished phase never resumes)
    log_every: int = 1  # console lines; the JSONL log gets every step
    tensorboard: bool = True

    def __post_init__(self):
        check_choices(self)
        self.betas = tuple(float(b) for b in self.betas)
        check(self.lr > 0 and math.isfinite(self.lr), "lr", f"must be a finite number > 0, got {self.lr}")
        check(self.weight_decay >= 0 and math.isfinite(self.weight_decay), "weight_decay",
              f"must be a finite number >= 0, got {self.weight_decay}")
        check(self.lr * self.weight_decay < 1, "weight_decay",
              f"lr * weight_decay must be < 1 (AdamW scales the weights by 1 - lr * weight_decay each step), got "
              f"{self.lr} * {self.weight_decay}")
        check(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas), "betas",
              f"must be two numbers in [0, 1), got {list(self.betas)}")
        check(0 < self.eps < 1, "eps", f"must be a number in (0, 1), got {self.eps}")
        check(self.max_grad_norm >= 0 and math.isfinite(self.max_grad_norm), "max_grad_norm",
              f"must be a finite number >= 0 (0 disables clipping), got {self.max_grad_norm}")
        check(0.0 <= self.warmup_ratio < 1.0, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        check(0 < self.epochs <= MAX_EPOCHS, "epochs", f"must be in (0, {MAX_EPOCHS}], got {self.epochs}")
        check(self.max_steps is None or 1 <= self.max_steps <= MAX_STEPS, "max_steps",
              f"must be in [1, {MAX_STEPS}] or null (then epochs decide), got {self.max_steps}")
        check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32), got {self.seed}")
        check(0.0 <= self.lam <= 1.0, "lam", f"must be in [0, 1], got {self.lam}")
        check(self.zero_stage in (2, 3), "zero_stage", f"must be 2 or 3, got {self.zero_stage}")
        check(not self.offload_optimizer or self.backend == "deepspeed", "offload_optimizer",
               "needs backend: deepspeed (with fsdp2 use fsdp_cpu_offload)")
        check(not self.fsdp_cpu_offload or self.backend == "fsdp2", "fsdp_cpu_offload", "needs backend: fsdp2")
        check(self.checkpoint_every >= 1, "checkpoint_every", f"must be >= 1, got {self.checkpoint_every}")
        # keep_last=1 is safe here (unlike with asynchronous saves): a new checkpoint is complete and renamed
        # into place before any older one is deleted, so a crash always leaves one complete checkpoint.
        check(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")
        check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if steps_per_epoch < 1:
            raise ValueError("the training data yields no optimizer step: add data or lower the batch size")
        return max(1, math.ceil(self.epochs * steps_per_epoch))
