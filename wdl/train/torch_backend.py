"""torch's own training stack: one process, or FSDP2 (`fully_shard`, launched with torchrun); torch AdamW,
`clip_grad_norm_`, torch.distributed.checkpoint (DCP) checkpoints."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from transformers import PreTrainedModel

from wdl.distributed import DistContext
from wdl.models import JointModel, JointOutput, causal_lm_skeleton, load_causal_lm

from .backend import StepResult, TrainBackend, model_inputs
from .config import TrainConfig
from .optim import build_adamw, set_lr

# DCP: frozen (weak) parameters never change, so they are not saved; they come back from their source.
_SD_OPTIONS = StateDictOptions(ignore_frozen_params=True)


@contextlib.contextmanager
def single_process_dcp():
    """DCP without a process group warns on every save and load that it assumes one process, which is what one
    process means: that warning alone is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled, )?unavailable or uninitialized",
                                category=UserWarning)
        yield


class SingleBackend(TrainBackend):
    """One process: the JointModel on this device, autocast for bf16."""

    def __init__(self, cfg: TrainConfig, dist_ctx: DistContext):
        super().__init__(cfg, dist_ctx)
        if type(self) is SingleBackend and dist_ctx.distributed:
            raise ValueError(f"backend 'single' runs one process, but WORLD_SIZE={dist_ctx.world_size}: "
                             "use train.backend=fsdp2 or deepspeed under torchrun")

    def load_model(self, path: str) -> PreTrainedModel:
        return load_causal_lm(path, dtype=torch.float32, device=self.device, **self.model_options())

    def setup(self, joint: JointModel) -> None:
        self.place(joint)
        self.joint = joint
        self.optimizer = build_adamw(joint, self.cfg, fused=self.device.type == "cuda")
        self.params = [p for p in joint.parameters() if p.requires_grad]

    def place(self, joint: JointModel) -> None:
        joint.to(self.device)

    def autocast(self):
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.compute_dtype)

    def forward_backward(self, batch: dict, num_items: float) -> JointOutput:
        with self.autocast():
            out = self.joint(**model_inputs(batch), num_items=num_items)
        out.loss.backward()
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

    def _state(self) -> dict:
        model_sd, optim_sd = get_state_dict(self.joint, self.optimizer, options=_SD_OPTIONS)
        return {"model": model_sd, "optim": optim_sd}

    def save(self, path: Path) -> None:
        with single_process_dcp():
            dcp.save(self._state(), checkpoint_id=str(path), no_dist=not dist.is_initialized())

    def load(self, path: Path) -> None:
        state = self._state()
        with single_process_dcp():
            dcp.load(state, checkpoint_id=str(path), no_dist=not dist.is_initialized())
        set_state_dict(self.joint, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))

    def full_state_dict(self, which: str) -> dict[str, torch.Tensor] | None:
        sub = getattr(self.joint, which)
        return {k: v.detach().cpu() for k, v in sub.state_dict().items()} if self.dist.is_main else None


class FSDP2Backend(SingleBackend):
    """FSDP2: `fully_shard` on every decoder block of both sub-models, then on the JointModel root; the optimizer
    step and the DCP checkpoints are the single backend's, on sharded parameters.

    The root unit holds what no block owns: the embeddings, final norms and lm_heads of both sub-models. The
    fused loss runs inside the root's forward, where FSDP has already all-gathered the root unit (the root is
    not resharded after forward), so the kernel reads full lm_head weights; their gradients flow through
    autograd to the unsharded parameters and FSDP's post-backward hook reduce-scatters them like any other.
    Tied embeddings are one parameter in one unit. FSDP's own division of the reduced gradients by the world
    size is switched off: the loss is already normalised by the global label-token count, so the ranks'
    gradients are summed.

    Loading: only rank 0 reads the checkpoints (into host memory); the other ranks build meta skeletons and
    receive their shards from rank 0 in `setup`.
    """

    def load_model(self, path: str) -> PreTrainedModel:
        if self.dist.is_main:
            return load_causal_lm(path, dtype=torch.float32, device="cpu", **self.model_options())
        return causal_lm_skeleton(path, device=self.device, **self.model_options())

    def place(self, joint: JointModel) -> None:
        # rank 0's full state, broadcast once everything is sharded (detached views: no copy)
        full_sd = {k: v.detach() for k, v in joint.state_dict().items()} if self.dist.is_main else {}
        mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
        mp = MixedPrecisionPolicy(param_dtype=self.compute_dtype, reduce_dtype=torch.float32)
        pinned = self.device.type == "cuda"  # pinned host memory needs an accelerator
        offload = CPUOffloadPolicy(pin_memory=pinned) if self.cfg.fsdp_cpu_offload else OffloadPolicy()
        kwargs = {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}
        for sub in joint.sub_models().values():
            for block in sub.get_decoder().layers:
                fully_shard(block, **kwargs)
        fully_shard(joint, **kwargs)
        for module in joint.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)
                module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
        home = torch.device("cpu") if self.cfg.fsdp_cpu_offload else self.device
        if any(t.is_meta for t in [*joint.parameters(), *joint.buffers()]):
            joint.to_empty(device=home)
        else:
            joint.to(home)
        set_model_state_dict(joint, full_sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                      strict=False))
        for buf in joint.buffers():  # non-persistent buffers (rotary frequencies) are in no state dict
            staged = buf.to(self.device)  # NCCL broadcasts device tensors
            dist.broadcast(staged, src=0)
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
