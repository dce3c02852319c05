"""The interface every execution backend implements (one process, FSDP2, DeepSpeed ZeRO-2/3).

A backend builds its models the way its parallelism needs them, then runs the step:

    load_models(strong, weak)           the sub-models, loaded for this backend (meta skeletons on FSDP2's
                                        non-zero ranks, partitioned under ZeRO-3, ...)
    setup(joint)                        shard / wrap the JointModel, build the optimizer
    forward_backward(batch, num_items)  run JointModel (its loss divides by num_items) and backprop;
                                        returns the detached JointOutput
    optimizer_step(lr, loss_finite)     global grad norm, clipping, finite check (same answer on all ranks),
                                        then the update or, when not finite, nothing; returns StepResult
    save(dir) / load(dir)               model + optimizer state (collective)
    full_state_dict(which)              the full weights of one sub-model on rank 0 (collective), for export

`gradient_divide_factor` is what the backend's reduction divides the summed gradients of the ranks by: 1 where
gradients are summed (one process; FSDP2 with its own division switched off), the world size where they are
averaged (DeepSpeed ZeRO). The loop's loss divisor takes it into account (wdl/train/loop.py).

Mixed precision (dtype bf16): parameters and optimizer states stay fp32 (the master copy); compute runs in
bf16 through autocast (single), FSDP2's MixedPrecisionPolicy (param_dtype bf16, gradient reduction in fp32), or
DeepSpeed's bf16 mode (bf16 module, fp32 master in the ZeRO optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from wdl.distributed import DistContext
from wdl.models import JointModel, JointOutput, resolve_dtype

from .config import TrainConfig

MODEL_INPUTS = ("input_ids", "labels", "position_ids")


@dataclass(frozen=True)
class StepResult:
    grad_norm: float  # global L2 norm of the gradients before clipping (nan/inf when not finite)
    applied: bool  # the optimizer update happened


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class TrainBackend:
    gradient_divide_factor: float = 1.0

    def __init__(self, cfg: TrainConfig, dist: DistContext):
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.compute_dtype = resolve_dtype(cfg.dtype, dist.device)
        self.joint: JointModel | None = None  # the (possibly sharded) module whose forward computes the loss

    # ------------------------------------------------------------------ models
    def load_model(self, path: str) -> PreTrainedModel:
        raise NotImplementedError

    def load_models(self, strong: str, weak: str | None) -> tuple[PreTrainedModel, PreTrainedModel | None]:
        return self.load_model(strong), (self.load_model(weak) if weak is not None else None)

    def model_options(self) -> dict:
        cfg = self.cfg
        return dict(attn_implementation=cfg.attn_implementation, use_liger=cfg.use_liger,
                    activation_checkpointing=cfg.activation_checkpointing)

    def setup(self, joint: JointModel) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ the step
    def forward_backward(self, batch: dict, num_items: float) -> JointOutput:
        raise NotImplementedError

    def optimizer_step(self, lr: float, loss_finite: bool) -> StepResult:
        raise NotImplementedError

    def skip_step(self) -> None:
        """A step without supervised tokens: drop whatever (zero) gradients were accumulated."""

    # ------------------------------------------------------------------ state
    def save(self, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self, which: str) -> dict[str, torch.Tensor] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass
