"""DeepSpeed ZeRO-2 / ZeRO-3 (optionally with the optimizer offloaded to the CPU) behind the TrainBackend interface.

The fused loss reads the lm_head weights by attribute inside JointModel.forward, never through the lm_head
module's own forward, so ZeRO-3's per-module hooks would hand the kernel an empty partition. Each lm_head weight
(the input embedding when tied) is therefore registered as an external parameter of the JointModel: ZeRO-3
gathers it for JointModel's forward, re-gathers it for its backward, and reduces its gradient like any other
(tests/train/test_distributed.py checks the gradients against one process).

Gradient accumulation is ours (a step has as many micro-batches as the loader packs): DeepSpeed runs with
`managed_gradient_accumulation: false`, so backward() only accumulates and step() is the boundary. ZeRO averages
the gradients over the data-parallel ranks and has no summing reduction under ZeRO-3 (DeepSpeed refuses
`gradient_allreduce_op: sum` there), hence `gradient_divide_factor` = world size. The finite check of the
gradients is DeepSpeed's own: its ZeRO optimizer skips an update whose gradient norm is not finite (the same
decision on all ranks); we read `was_step_applied()`.

Loading: under ZeRO-3 the models are built under `deepspeed.zero.Init` (transformers' ZeRO-3 integration), so
each rank materialises only its partitions while the checkpoint streams in. DeepSpeed's bf16 mode keeps bf16
module weights (the fp32 master lives in the ZeRO optimizer), so models load in the compute dtype.

DeepSpeed is optional: it is imported when this backend is built.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import torch
from transformers import PreTrainedModel

from wdl.distributed import DistContext
from wdl.models import JointModel, JointOutput, load_causal_lm

from .backend import StepResult, TrainBackend, model_inputs
from .config import TrainConfig
from .optim import build_adamw, param_groups, set_lr

TAG = "ds"


def import_deepspeed():
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError:
        raise ValueError("train.backend=deepspeed needs DeepSpeed: pip install 'deepspeed>=0.19.8'") from None
    from deepspeed.runtime import constants

    if not hasattr(constants, "MANAGED_GRADIENT_ACCUMULATION"):  # our accumulation needs the unmanaged mode
        raise ValueError(f"DeepSpeed {deepspeed.__version__} is too old for train.backend=deepspeed (no "
                         "managed_gradient_accumulation): pip install 'deepspeed>=0.19.8'")
    return deepspeed


def deepspeed_config(cfg: TrainConfig, compute_dtype: torch.dtype) -> dict:
    zero: dict = {
        "stage": cfg.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": 5e7,
    }
    if cfg.zero_stage == 3:
        zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=False)
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    bf16 = compute_dtype == torch.bfloat16
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedBackend(TrainBackend):
    def __init__(self, cfg: TrainConfig, dist_ctx: DistContext):
        super().__init__(cfg, dist_ctx)
        self.ds = import_deepspeed()
        self.ds.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo",
                                 auto_mpi_discovery=False)
        self.gradient_divide_factor = float(dist_ctx.world_size)

    def load_model(self, path: str) -> PreTrainedModel:
        return load_causal_lm(path, dtype=self.compute_dtype, device=None, **self.model_options())

    def load_models(self, strong: str, weak: str | None) -> tuple[PreTrainedModel, PreTrainedModel | None]:
        if self.cfg.zero_stage != 3:
            return super().load_models(strong, weak)
        if importlib.util.find_spec("accelerate") is None:  # transformers' ZeRO-3 loading path needs it
            raise ValueError("train.backend=deepspeed with zero_stage=3 loads models through transformers' ZeRO-3 "
                             "integration, which needs accelerate: pip install 'accelerate>=1.1'")
        from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config  # slow import

        keep_alive = HfDeepSpeedConfig(deepspeed_config(self.cfg, self.compute_dtype))  # transformers keeps a weakref
        try:
            return super().load_models(strong, weak)
        finally:
            unset_hf_deepspeed_config()  # later from_config calls (export skeletons) must not partition
            del keep_alive

    def setup(self, joint: JointModel) -> None:
        cfg = self.cfg
        if cfg.offload_optimizer:
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            self.optimizer = DeepSpeedCPUAdam(param_groups(joint, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas,
                                              eps=cfg.eps, weight_decay=cfg.weight_decay, adamw_mode=True)
        else:
            self.optimizer = build_adamw(joint, cfg, fused=self.device.type == "cuda")
        if cfg.zero_stage == 3:
            for w in joint.lm_head_weights():
                self.ds.zero.register_external_parameter(joint, w)
        self.engine, _, _, _ = self.ds.initialize(model=joint, optimizer=self.optimizer,
                                                  config=deepspeed_config(cfg, self.compute_dtype),
                                                  dist_init_required=False)
        self.joint = self.engine.module

    def forward_backward(self, batch: dict, num_items: float) -> JointOutput:
        out = self.engine(**model_inputs(batch), num_items=num_items)
        self.engine.backward(out.loss, scale_wrt_gas=False)
        return JointOutput(out.loss.detach(), out.stats)

    def optimizer_step(self, lr: float, loss_finite: bool) -> StepResult:
        set_lr(self.optimizer, lr)  # the ZeRO optimizer steps this optimizer's param groups
        self.engine.step()
        applied = bool(self.engine.was_step_applied())
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        if not applied and math.isfinite(norm) and norm >= 0:
            norm = float("inf")  # DeepSpeed reports a skipped step's norm as a finite sentinel on some paths
        return StepResult(norm, applied)

    def skip_step(self) -> None:
        pass  # no supervised token: the accumulated gradients are zero and stay so

    def save(self, path: Path) -> None:
        self.engine.save_checkpoint(str(path), tag=TAG, client_state={}, save_latest=False,
                                    exclude_frozen_parameters=True)

    def load(self, path: Path) -> None:
        load_path, _ = self.engine.load_checkpoint(str(path), tag=TAG, load_module_strict=False,
                                                   load_optimizer_states=True, load_lr_scheduler_states=False)
        if load_path is None:
            raise ValueError(f"{path}: no DeepSpeed checkpoint (tag {TAG!r}) could be loaded")

    def full_state_dict(self, which: str) -> dict[str, torch.Tensor] | None:
        """Full tensors of one sub-model on rank 0; under ZeRO-3 gathered one parameter at a time."""
        sub = getattr(self.joint, which)
        out: dict[str, torch.Tensor] = {}
        first_key: dict[int, str] = {}
        for key, t in sub.state_dict(keep_vars=True).items():
            if id(t) in first_key:  # tied weights: one tensor, two names
                if self.dist.is_main:
                    out[key] = out[first_key[id(t)]]
                continue
            first_key[id(t)] = key
            if hasattr(t, "ds_id"):
                with self.ds.zero.GatheredParameters([t], modifier_rank=None):
                    if self.dist.is_main:
                        out[key] = t.data.detach().cpu().clone()
            elif self.dist.is_main:
                out[key] = t.detach().cpu().clone()
        return out if self.dist.is_main else None

    def close(self) -> None:
        destroy = getattr(self.engine, "destroy", None)
        if destroy is not None:
            destroy()
