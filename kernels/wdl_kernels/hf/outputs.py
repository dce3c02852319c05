"""What the patched models return, in forms the HF Trainer and TRL can take apart and rebuild.

`Trainer.prediction_step` collects every non-loss field of the output as the predictions and rebuilds
containers as `type(x)(...)` (`nested_detach`, `nested_concat`): plain dicts of tensors survive that, NamedTuples
do not. So the per-token statistics travel as a dict of [B, T] tensors, aligned with the logits they replace
(position t scores the token at t + 1; `valid` is 1.0 where a target exists).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput


# transformers 5 renamed past_key_values to cache
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class FusedCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` whose loss came from the fused kernel. `logits` is None unless asked for.

    token_stats: per-token float32 [B, T] tensors of the distribution the loss was computed on (the mixed one
    for MixedCausalLM), no grad: lse, entropy, nll, target_logit, margin (target logit minus the mean of the
    others), max_prob, accuracy (1.0 where argmax == target, ties count), valid.
    """

    token_stats: dict[str, torch.Tensor] | None = None


@dataclass
class TRLFusedHeadOutput(ModelOutput):
    """The fields TRL's trainers read after `model(..., labels=labels, fused_lm_head=True)` (TRL >= 1.16,
    `trl.trainer.utils.FusedCausalLMOutput`), computed by the wdl kernel. Per-token fields are
    [B, T - 1] (or [B, T] with `shift_labels`) and zero where the label is ignored; `log_probs` has grad.
    `log_sum_sq_probs` and `mean_logits` are not computed (None)."""

    loss: torch.Tensor | None = None
    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    log_sum_sq_probs: torch.Tensor | None = None
    mean_logits: torch.Tensor | None = None
    is_top1: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    token_stats: dict[str, torch.Tensor] | None = None


def trl_output(fused, shifted: bool) -> TRLFusedHeadOutput:
    """TRL's view of a FusedLoss: without pre-shifted labels TRL scores positions 0..T-2."""
    cut = slice(None) if shifted else slice(None, -1)
    mask = fused.mask[:, cut]
    zero = torch.zeros((), device=mask.device)
    stats = {k: v[:, cut] for k, v in fused.stats.items()}
    return TRLFusedHeadOutput(
        loss=fused.loss,
        log_probs=-fused.token_loss[:, cut],
        entropy=torch.where(mask, stats["entropy"], zero),
        is_top1=(stats["accuracy"] > 0.5) & mask,
        label_mask=mask,
        token_stats=stats,
    )


def _token_stats(predictions):
    if isinstance(predictions, dict):
        return predictions
    if isinstance(predictions, (tuple, list)):
        for p in predictions:
            if isinstance(p, dict) and "valid" in p:
                return p
    raise ValueError("token_metrics needs the token_stats dict in the predictions: evaluate a model patched by "
                     "wdl_kernels.hf (apply_fused_loss or MixedCausalLM) with stats enabled")


def token_metrics(eval_pred) -> dict[str, float]:
    """A ready `compute_metrics` for `Trainer(compute_metrics=token_metrics)` with a patched model: the means over
    target tokens of nll, entropy, margin and max_prob, and their `mean_token_accuracy`."""
    stats = _token_stats(eval_pred.predictions)
    valid = np.asarray(stats["valid"]) == 1.0  # batches padded by the eval loop hold -100 here
    n = max(int(valid.sum()), 1)
    out = {}
    for name in ("nll", "entropy", "margin", "max_prob", "accuracy"):
        if name in stats:
            key = "mean_token_accuracy" if name == "accuracy" else name
            out[key] = float(np.asarray(stats[name], dtype=np.float64)[valid].sum() / n)
    return out
