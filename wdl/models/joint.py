"""JointModel: a strong and an optional weak causal LM trained through the fused mixed cross-entropy.

    z = lam * z_strong + (1 - lam) * z_weak,    loss = CE(z, y)         (joint, WMSS phase 3)
    z = z_strong                                                        (weak=None: plain SFT)

Each sub-model runs to its final hidden states only; the kernel receives both hidden states and both lm_head
weights and never builds an [N, V] tensor. The loss is computed inside `forward` so that FSDP2 (the root unit
holds the lm_heads) and ZeRO-3 (the lm_heads are registered as external parameters of this module) see the
lm_head use and gather/reduce the weights and their gradients.

`loss_impl="reference"` does what the reference implementation does instead (both models' full logits, stacked,
mixed, fp32-upcast cross-entropy): the baseline of the end-to-end benchmark and of the tests.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

import wdl_kernels
from wdl_kernels import MixedCEStats
from wdl_kernels.hf import decoder_hidden_states, lm_head_weight

IGNORE_INDEX = -100
LOSS_IMPLS = ("fused", "reference")


class JointOutput(NamedTuple):
    loss: torch.Tensor  # float32 scalar: SUM of the per-token losses over label tokens (the caller normalises)
    stats: MixedCEStats  # per-row float32 stats of the mixed distribution [N], no grad


class JointModel(nn.Module):
    def __init__(self, strong: PreTrainedModel, weak: PreTrainedModel | None = None, *, lam: float = 0.5,
                 freeze_weak: bool = False, loss_impl: str = "fused", kernel_impl: str = "auto"):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f"loss_impl must be one of {LOSS_IMPLS}, got {loss_impl!r}")
        if weak is not None and weak.config.vocab_size != strong.config.vocab_size:
            raise ValueError(f"weak and strong models need the same vocabulary: weak has "
                             f"{weak.config.vocab_size} ids, strong {strong.config.vocab_size}")
        if weak is None and freeze_weak:
            raise ValueError("freeze_weak=True needs a weak model")
        self.strong = strong
        self.weak = weak
        self.lam = float(lam)
        self.freeze_weak = bool(freeze_weak)
        self.loss_impl = loss_impl
        self.kernel_impl = kernel_impl
        if weak is not None and freeze_weak:
            weak.requires_grad_(False)
            weak.eval()

    @property
    def is_joint(self) -> bool:
        return self.weak is not None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.weak is not None and self.freeze_weak:
            self.weak.eval()  # a frozen weak model is a fixed function: no dropout, ever
        return self

    def sub_models(self) -> dict[str, PreTrainedModel]:
        return {"strong": self.strong, **({"weak": self.weak} if self.weak is not None else {})}

    def lm_head_weights(self) -> list[nn.Parameter]:
        return [lm_head_weight(m) for m in self.sub_models().values()]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None,
                **_: object) -> JointOutput:
        """input_ids/labels/position_ids [B, T]; labels already shifted (-100 where not supervised)."""
        inputs = {"input_ids": input_ids}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
        labels = labels.reshape(-1)
        if self.loss_impl == "reference":
            return self._reference_forward(inputs, labels)
        hidden = decoder_hidden_states(self.strong, **inputs)
        # Under autocast the final norm returns fp32 (the residual stream is fp32): run the lm_head GEMMs in the
        # autocast dtype, as an nn.Linear lm_head would.
        dtype = _autocast_dtype(hidden.device) or hidden.dtype
        hidden = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
        weight = lm_head_weight(self.strong).to(dtype)
        weak_hidden = weak_weight = None
        if self.weak is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_weak):
                weak_hidden = decoder_hidden_states(self.weak, **inputs)
            weak_hidden = weak_hidden.reshape(-1, weak_hidden.shape[-1]).to(dtype)
            weak_weight = lm_head_weight(self.weak).to(dtype)
        out = wdl_kernels.mixed_linear_cross_entropy(
            hidden, weight, labels, weak_hidden, weak_weight, lam=self.lam,
            ignore_index=IGNORE_INDEX, reduction="sum", return_stats=True, impl=self.kernel_impl,
        )
        return JointOutput(out.loss, out.stats)

    def _reference_forward(self, inputs: dict, labels: torch.Tensor) -> JointOutput:
        """The reference implementation's path: full logits of both models, stacked, mixed, fp32 loss."""
        logits = self.strong(**inputs, use_cache=False).logits
        if self.weak is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_weak):
                weak_logits = self.weak(**inputs, use_cache=False).logits
            stacked = torch.stack([weak_logits, logits])  # a copy, as in QwenBoostForCausalLM
            logits = (1.0 - self.lam) * stacked[0] + self.lam * stacked[1]
        logits = logits.reshape(-1, logits.shape[-1]).float()  # HF ForCausalLMLoss upcasts
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        with torch.no_grad():
            stats = stats_from_logits(logits, labels)
        return JointOutput(loss, stats)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


@torch.no_grad()
def stats_from_logits(z: torch.Tensor, labels: torch.Tensor) -> MixedCEStats:
    """The kernel's per-row statistics computed from materialized logits [N, V] (reference path, tests)."""
    z = z.float()
    valid = labels != IGNORE_INDEX
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    lse = torch.logsumexp(z, dim=1)
    logp = z - lse[:, None]
    entropy = -(logp.exp() * logp).sum(dim=1)
    zy = z.gather(1, safe[:, None]).squeeze(1)
    zero = torch.zeros_like(lse)
    others = (z.sum(dim=1) - zy) / max(z.shape[1] - 1, 1)
    return MixedCEStats(
        lse=lse, entropy=entropy, nll=torch.where(valid, lse - zy, zero), target_logit=torch.where(valid, zy, zero),
        margin=torch.where(valid, zy - others, zero), max_prob=torch.exp(z.amax(dim=1) - lse),
        accuracy=(valid & (zy >= z.amax(dim=1))).float(),
    )
