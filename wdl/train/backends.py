"""Execution backends behind one interface: one process, FSDP2 (torchrun), DeepSpeed ZeRO-2/3.

The loop calls only:
    forward_backward(batch, scale)      run JointModel (the loss is computed inside its forward) and backprop
                                        loss_sum * scale; returns the detached JointOutput
    optimizer_step(lr, loss_finite)     global grad norm, clipping, finite check (same answer on all ranks),
                                        then the update or, when not finite, nothing; returns StepResult
    save(dir) / load(dir)               model + optimizer state (collective)
    full_state_dict(which)              the full weights of one sub-model on rank 0 (collective), for export

Mixed precision (dtype bf16): parameters and optimizer states stay fp32 (the master copy); compute runs in
bf16 through autocast (single), FSDP2's MixedPrecisionPolicy (param_dtype bf16, gradient reduction in fp32), or
DeepSpeed's bf16 mode (bf16 module, fp32 master in the ZeRO optimizer).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from wdl.models import JointModel, JointOutput

from .config import TrainConfig
from .distributed import DistInfo
from .optim import build_adamw, set_lr


@dataclass(frozen=True)
class StepResult:
    grad_norm: float  # global L2 norm of the gradients before clipping (nan/inf when not finite)
    applied: bool  # the optimizer update happened


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


MODEL_INPUTS = ("input_ids", "labels", "position_ids")


class Backend:
    name = "base"

    def __init__(self, joint: JointModel, cfg: TrainConfig, dist_info: DistInfo, compute_dtype: torch.dtype):
        self.cfg = cfg
        self.dist = dist_info
        self.device = dist_info.device
        self.compute_dtype = compute_dtype
        self.joint = joint  # the (possibly sharded) module whose forward computes the loss

    # ------------------------------------------------------------------ the step
    def forward_backward(self, batch: dict, scale: float) -> JointOutput:
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

    @staticmethod
    def _inputs(batch: dict) -> dict:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}


class TorchBackend(Backend):
    """One process, or FSDP2 (subclass): torch AdamW, clip_grad_norm_, DCP checkpoints."""

    name = "single"

    def __init__(self, joint: JointModel, cfg: TrainConfig, dist_info: DistInfo, compute_dtype: torch.dtype):
        super().__init__(joint, cfg, dist_info, compute_dtype)
        self.shard(joint)
        self.optimizer = build_adamw(joint, cfg, fused=self.device.type == "cuda")
        self.params = [p for p in joint.parameters() if p.requires_grad]

    def shard(self, joint: JointModel) -> None:
        joint.to(self.device)

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def forward_backward(self, batch: dict, scale: float) -> JointOutput:
        with self.autocast():
            out = self.joint(**self._inputs(batch))
        # `scale` normalises by the GLOBAL label-token count, so the gradients must be SUMMED over ranks; FSDP
        # (like DDP and ZeRO) averages them, hence the factor world_size (exact for powers of two).
        (out.loss * (scale * self.dist.world_size)).backward()
        return JointOutput(out.loss.detach(), out.stats)

    def grad_norm(self) -> torch.Tensor:
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=self.device.type == "cuda" or None)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor holding the global norm
            norm = norm.full_tensor()
        return norm

    def optimizer_step(self, lr: float, loss_finite: bool) -> StepResult:
        norm = float(self.grad_norm())  # identical on every rank (a global reduction)
        applied = loss_finite and math.isfinite(norm)
        if applied:
            set_lr(self.optimizer, lr)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(norm, applied)

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # DCP: frozen (weak) parameters never change, so they are not saved; they come back from their source.
    _SD_OPTIONS = StateDictOptions(ignore_frozen_params=True)

    def _state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.joint, self.optimizer, options=self._SD_OPTIONS)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, path: Path) -> None:
        dcp.save(self._state(), checkpoint_id=str(path))

    def load(self, path: Path) -> None:
        state = self._state()
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.joint, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))

    def full_state_dict(self, which: str) -> dict[str, torch.Tensor] | None:
        sub = getattr(self.joint, which)
        return {k: v.detach().cpu() for k, v in sub.state_dict().items()} if self.dist.is_main else None


class FSDP2Backend(TorchBackend):
    """FSDP2: `fully_shard` on every decoder block of both sub-models, then on the JointModel root.

    The root unit holds what no block owns: the embeddings, final norms and lm_heads of both sub-models. The
    fused loss runs inside the root's forward, where FSDP has already all-gathered the root unit (the root is
    not resharded after forward), so the kernel reads full lm_head weights; their gradients flow through
    autograd to the unsharded parameters and FSDP's post-backward hook reduce-scatters them like any other.
    Tied embeddings are one parameter in one unit.
    """

    name = "fsdp2"

    def shard(self, joint: JointModel) -> None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        # Rank 0 holds the real weights; the other ranks hold meta skeletons (see Trainer). Keep rank 0's full
        # state to broadcast once everything is sharded.
        full_sd = {k: v.detach() for k, v in joint.state_dict().items()} if self.dist.is_main else {}  # no copy
        mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        pinned = self.device.type == "cuda"  # pinned host memory needs an accelerator
        offload = CPUOffloadPolicy(pin_memory=pinned) if self.cfg.fsdp_cpu_offload else OffloadPolicy()
        kwargs = {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}
        for sub in joint.sub_models().values():
            for block in sub.get_decoder().layers:
                fully_shard(block, **kwargs)
        fully_shard(joint, **kwargs)
        home = torch.device("cpu") if self.cfg.fsdp_cpu_offload else self.device
        if any(t.is_meta for t in [*joint.parameters(), *joint.buffers()]):
            joint.to_empty(device=home)
        else:
            joint.to(home)
        set_model_state_dict(joint, full_sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                      strict=False))
        for buf in joint.buffers():  # non-persistent buffers (rotary frequencies) are in no state dict
            staged = buf.to(self.device)  # NCCL broadcasts device tensors
            torch.distributed.broadcast(staged, src=0)
            buf.copy_(staged)
        del full_sd

    def autocast(self):
        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts parameters for compute

    def full_state_dict(self, which: str) -> dict[str, torch.Tensor] | None:
        sd = get_model_state_dict(self.joint, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            return None
        prefix = f"{which}."
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def build_backend(joint: JointModel, cfg: TrainConfig, dist_info: DistInfo, compute_dtype: torch.dtype) -> Backend:
    if cfg.backend == "single":
        if dist_info.distributed:
            raise ValueError(f"backend 'single' runs one process, but WORLD_SIZE={dist_info.world_size}: "
                             "use train.backend=fsdp2 or deepspeed under torchrun")
        return TorchBackend(joint, cfg, dist_info, compute_dtype)
    if cfg.backend == "fsdp2":
        return FSDP2Backend(joint, cfg, dist_info, compute_dtype)
    from .deepspeed_backend import DeepSpeedBackend

    return DeepSpeedBackend(joint, cfg, dist_info, compute_dtype)
