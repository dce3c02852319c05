"""The fused loss for Hugging Face causal LMs, for any trainer (HF Trainer, TRL, Accelerate, your own loop).

    from wdl_kernels.hf import fused_causal_lm_loss
    out = fused_causal_lm_loss(model, input_ids=ids, labels=labels, attention_mask=mask)   # HF-style labels
    out.loss.backward()

The model runs its decoder to the final (normed) hidden states only; the lm_head weight goes to the kernel, so
no [batch, seq, vocab] logits tensor is ever built. Works for any model with `get_decoder()` and output
embeddings (tied embeddings included). Transformers itself is not a dependency of this package.

Sharded weights (FSDP2, DeepSpeed ZeRO-3): outside a module's forward, a sharded lm_head weight is only a
shard. So the whole computation runs *inside* `model.__call__`: the model's `forward` is swapped for the fused
one for the duration of the call and the call goes through the outermost wrapper you pass (DDP, DeepSpeed
engine, FSDP2 module). The framework's hooks then gather the weight before the forward, attach its
pre-backward hooks to the returned loss (so the weight is gathered again for the backward), and reduce the
gradient afterwards. For ZeRO-3 the lm_head weight is registered once as an external parameter of the model
(`deepspeed.zero.register_external_parameter`), since the model module reads it directly. With FSDP2 the
lm_head must live in the root FSDP unit (the default when you `fully_shard` the decoder layers and then the
whole model) — a separately sharded lm_head is reported with a ValueError.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from .api import MixedCEOutput, mixed_linear_cross_entropy


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The output-embedding weight [V, H] of a causal LM (the input embedding itself when tied)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head): pass a causal LM such as "
                         "AutoModelForCausalLM.from_pretrained(...)")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}.lm_head has a bias, which the fused loss does not support")
    return head.weight


def decoder_hidden_states(model: nn.Module, **inputs) -> torch.Tensor:
    """Final hidden states [B, T, H] (after the final norm) from the model's decoder; never the logits."""
    if not hasattr(model, "get_decoder"):
        raise ValueError(f"{type(model).__name__} has no get_decoder(): pass a Hugging Face causal LM")
    inputs.setdefault("use_cache", False)
    out = model.get_decoder()(**inputs, return_dict=True)
    return out.last_hidden_state


def shift_labels(labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """HF-style labels (aligned with input_ids) -> next-token targets: labels[..., 1:] padded with ignore_index."""
    pad = torch.full_like(labels[..., :1], ignore_index)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / DeepSpeed engine / torch.compile wrappers."""
    inner = model
    for _ in range(8):
        nxt = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
        if not isinstance(nxt, nn.Module):
            break
        inner = nxt
    return inner


def _is_dtensor(x: torch.Tensor) -> bool:
    return type(x).__name__ == "DTensor"


def _is_fsdp2(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def _is_zero3(p: torch.Tensor) -> bool:
    return hasattr(p, "ds_id")


def _register_zero3_external(model: nn.Module, weight: torch.Tensor) -> None:
    if getattr(model, "_wdl_zero3_registered", False):
        return
    from deepspeed.zero import register_external_parameter

    register_external_parameter(model, weight)
    model._wdl_zero3_registered = True


@contextlib.contextmanager
def _forward_replaced(module: nn.Module, fn):
    """Make `module(...)` run `fn` (hooks of the module and of its wrappers still fire)."""
    had_instance_forward = "forward" in module.__dict__
    previous = module.__dict__.get("forward")
    module.forward = fn
    try:
        yield
    finally:
        if had_instance_forward:
            module.forward = previous
        else:
            del module.forward


def _weak_hidden_and_weight(weak_model, inputs):
    weight = lm_head_weight(weak_model)
    if _is_dtensor(weight) or _is_zero3(weight):
        raise ValueError("the weak model's lm_head is sharded (FSDP2/ZeRO-3); keep the weak model unsharded here "
                         "(e.g. frozen and replicated), or train both models in one module as "
                         "wdl.models.JointModel does")
    grad = any(p.requires_grad for p in weak_model.parameters())
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        hidden = decoder_hidden_states(weak_model, **inputs)
    return hidden, weight


def fused_causal_lm_loss(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    *,
    weak_model: nn.Module | None = None,
    lam: float = 0.5,
    labels_shifted: bool = False,
    ignore_index: int = -100,
    reduction: str = "mean",
    num_items_in_batch: int | torch.Tensor | None = None,
    return_stats: bool = False,
    impl: str = "auto",
    **model_inputs: Any,
) -> MixedCEOutput:
    """Next-token cross-entropy of a causal LM (optionally mixed with a weak model's logits) without logits.

    labels: HF convention (aligned with input_ids; shifted here) unless `labels_shifted=True` (labels[t] is the
    target at position t already). `num_items_in_batch` (HF Trainer's gradient-accumulation count) turns the
    loss into sum / num_items_in_batch. `model` may be the wrapper (DDP, DeepSpeed engine): the call goes
    through it. Extra keyword arguments (attention_mask, position_ids, ...) go to the decoder(s).
    """
    if labels is None:
        raise ValueError("labels are required: pass labels (HF convention, -100 where no loss is wanted)")
    hf_model = unwrap(model)
    if input_ids is not None:
        model_inputs["input_ids"] = input_ids
    targets = labels if labels_shifted else shift_labels(labels, ignore_index)
    if num_items_in_batch is not None:
        reduction = "sum"

    def fused_forward(*_args, **_kwargs):
        weight = lm_head_weight(hf_model)
        if _is_dtensor(weight):
            raise ValueError("the lm_head weight is still sharded inside the model's forward: shard lm_head in the "
                             "root FSDP unit (fully_shard the decoder layers, then the whole model), not on its own")
        hidden = decoder_hidden_states(hf_model, **model_inputs)
        weak_hidden = weak_weight = None
        if weak_model is not None:
            weak_hidden, weak_weight = _weak_hidden_and_weight(unwrap(weak_model), model_inputs)
            weak_hidden = weak_hidden.reshape(-1, weak_hidden.shape[-1])
        return mixed_linear_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1), weak_hidden, weak_weight, lam=lam,
            ignore_index=ignore_index, reduction=reduction, return_stats=return_stats, impl=impl,
        )

    weight = lm_head_weight(hf_model)
    if _is_zero3(weight):
        _register_zero3_external(hf_model, weight)
    if model is hf_model and not _is_zero3(weight) and not _is_fsdp2(hf_model):
        out = fused_forward()  # plain module: nothing to gather
    else:
        with _forward_replaced(hf_model, fused_forward):
            out = model()
    if num_items_in_batch is not None:
        out = out._replace(loss=out.loss / num_items_in_batch)
    return out


def compute_loss(model, inputs: dict, return_outputs: bool = False, num_items_in_batch=None, **loss_kwargs):
    """Drop-in body for `Trainer.compute_loss` / TRL `SFTTrainer.compute_loss`:

        class FusedTrainer(transformers.Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                return wdl_kernels.hf.compute_loss(model, inputs, return_outputs, num_items_in_batch)

    `inputs` holds input_ids, labels (HF convention) and optional attention_mask/position_ids. With
    `return_outputs=True` the second value is a dict with the per-token stats (no logits exist).
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels", None)
    out = fused_causal_lm_loss(model, labels=labels, num_items_in_batch=num_items_in_batch,
                               return_stats=return_outputs, **loss_kwargs, **inputs)
    if return_outputs:
        return out.loss, {"loss": out.loss, "stats": out.stats}
    return out.loss
