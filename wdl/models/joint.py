"""JointModel: a strong and an optional weak causal LM trained through one mixed cross-entropy.

    z = lam * z_strong + (1 - lam) * z_weak,    loss = CE(z, y)         (joint, WMSS phase 3)
    z = z_strong                                                        (weak=None: plain SFT)

Each sub-model runs to its final hidden states only; the loss receives both hidden states and both lm_head
weights (the fused kernel by default, wdl/models/loss.py), so no [N, V] logits exist. The loss is computed
inside `forward` so that FSDP2 (the root unit holds the lm_heads) and ZeRO-3 (the lm_heads are registered as
external parameters of this module) see the lm_head use and gather/reduce the weights and their gradients.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from wdl_kernels.hf import decoder_hidden_states, lm_head_weight

from .loss import FusedMixedCrossEntropy, JointOutput, MixedLoss


class JointModel(nn.Module):
    def __init__(self, strong: PreTrainedModel, weak: PreTrainedModel | None = None, *, lam: float = 0.5,
                 freeze_weak: bool = False, loss: MixedLoss | None = None):
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if weak is not None and weak.config.vocab_size != strong.config.vocab_size:
            raise ValueError(f"weak and strong models need the same vocabulary: weak has "
                             f"{weak.config.vocab_size} ids, strong {strong.config.vocab_size}")
        if weak is None and freeze_weak:
            raise ValueError("freeze_weak=True needs a weak model")
        self.strong = strong
        self.weak = weak
        self.lam = float(lam)
        self.freeze_weak = bool(freeze_weak)
        self.loss = loss if loss is not None else FusedMixedCrossEntropy()
        if weak is not None and freeze_weak:
            weak.requires_grad_(False)
            weak.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.weak is not None and self.freeze_weak:
            self.weak.eval()  # a frozen weak model is a fixed function: no dropout, ever
        return self

    def sub_models(self) -> dict[str, PreTrainedModel]:
        return {"strong": self.strong, **({"weak": self.weak} if self.weak is not None else {})}

    def lm_head_weights(self) -> list[nn.Parameter]:
        return [lm_head_weight(m) for m in self.sub_models().values()]

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, position_ids: torch.Tensor | None = None, *,
                num_items: float | None = None) -> JointOutput:
        """input_ids/labels/position_ids [B, T], labels already shifted (wdl/labels.py); the loss is the summed
        per-token loss divided by `num_items` (the sum when None)."""
        inputs = {"input_ids": input_ids}
        if position_ids is not None:
            inputs["position_ids"] = position_ids
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
        return self.loss(hidden, weight, labels.reshape(-1), weak_hidden, weak_weight, lam=self.lam,
                         num_items=num_items)


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None
