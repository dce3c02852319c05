"""The output head of a Hugging Face causal LM as the kernel sees it: weights read by attribute, never called.

The fused loss replaces `lm_head(hidden)` + cross-entropy, so everything the model's lm_head module and forward
do to the logits must be reproduced here or refused:
- a plain `nn.Linear` (tied to the input embedding or not), optionally with a bias;
- peft LoRA on the lm_head: z = h W^T + sum_a s_a * dropout_a(h) A_a^T B_a^T is exactly a second kernel head
  (hidden' = [s_a * A_a(dropout_a(h))]_a, weight' = [B_a]_a), so no [V, H] merged weight is ever built;
- peft `modules_to_save` copies (their `.weight` is the active copy's);
- the logit transforms of a few architectures' configs (softcap, logit scale), as TRL's fused head reads them.
Anything else (quantized or custom heads, DoRA and other tuners, MoE router losses) is a ValueError.

Sharded weights: FSDP2 gathers the root unit's parameters around the root forward, so an lm_head inside the
root unit is a full tensor here (a DTensor means it was sharded on its own: refused). ZeRO-3 hands a module only
its own parameters, so the weights read here are registered as external parameters of the model the loss runs
in (`register_zero3_externals`), once, before DeepSpeed's own pre-forward hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class HeadTerm:
    """One kernel head: logits += hidden @ weight.T (+ bias). `hidden` is [N, K] (None until computed)."""

    weight: torch.Tensor
    bias: torch.Tensor | None = None
    hidden: torch.Tensor | None = None


def output_head(model: nn.Module) -> nn.Module:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "weight", None) is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head): pass a causal LM such as "
                         "AutoModelForCausalLM.from_pretrained(...)")
    return head


def lm_head_weight(model: nn.Module) -> torch.Tensor:
    """The output-embedding weight [V, H] of a causal LM (the input embedding itself when tied)."""
    head = output_head(model)
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}.lm_head has a bias; use wdl_kernels.hf.apply_fused_loss, which "
                         "passes it to the kernel")
    return head.weight


def decoder_hidden_states(model: nn.Module, **inputs) -> torch.Tensor:
    """Final hidden states [B, T, H] (after the final norm) from the model's decoder; never the logits."""
    if not hasattr(model, "get_decoder"):
        raise ValueError(f"{type(model).__name__} has no get_decoder(): pass a Hugging Face causal LM")
    inputs.setdefault("use_cache", False)
    return model.get_decoder()(**inputs, return_dict=True).last_hidden_state


def _peft_types():
    try:
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # peft is optional
        return None
    return LoraLayer, BaseTunerLayer, AuxiliaryTrainingWrapper


def _plain_linear(module: nn.Module, where: str) -> nn.Linear:
    # A subclass that overrides forward (quantized layers, custom heads) would be skipped: refuse it.
    if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
        raise ValueError(f"{where} is a {type(module).__name__}, not a plain nn.Linear: the fused loss reads its "
                         "weight directly and would skip its forward. Use the model's own loss for this head "
                         "(do not apply the fused loss)")
    return module


def head_terms(model: nn.Module, *, allow_lora: bool = True) -> tuple[HeadTerm, list]:
    """(base head, LoRA parts) of the model's output head. Each LoRA part is (dropout, lora_A, scaling) with its
    lora_B weight in a HeadTerm; `lora_hidden` turns them into kernel heads for given hidden states."""
    head = output_head(model)
    name = f"{type(model).__name__}.lm_head"
    peft = _peft_types()
    if peft is None:
        linear = _plain_linear(head, name)
        return HeadTerm(linear.weight, linear.bias), []
    lora_layer, tuner_layer, aux_wrapper = peft
    if isinstance(head, aux_wrapper):  # modules_to_save: the active trainable copy (or the original when disabled)
        active = head.active_adapters
        module = head.original_module if head.disable_adapters or not active else head.modules_to_save[active[0]]
        linear = _plain_linear(module, name)
        return HeadTerm(linear.weight, linear.bias), []
    if not isinstance(head, tuner_layer):
        linear = _plain_linear(head, name)
        return HeadTerm(linear.weight, linear.bias), []
    if not isinstance(head, lora_layer):
        raise ValueError(f"{name} carries a {type(head).__name__} adapter, which the fused loss does not support: "
                         "leave lm_head out of the adapter's target_modules, or merge the adapter first "
                         "(model.merge_and_unload())")
    base = _plain_linear(head.get_base_layer(), f"{name}.base_layer")
    base_term = HeadTerm(base.weight, base.bias)
    if head.disable_adapters or head.merged:  # peft then runs the base layer alone
        return base_term, []
    if not allow_lora:
        raise ValueError(f"LoRA on {name} is not supported inside MixedCausalLM (the kernel has two heads, both "
                         "taken by the strong and weak models): leave lm_head out of target_modules, or merge "
                         "the adapter first (model.merge_and_unload())")
    parts = []
    for adapter in head.active_adapters:
        if adapter not in head.lora_A:
            continue
        if adapter in getattr(head, "lora_variant", {}) or head.use_dora.get(adapter, False):
            raise ValueError(f"{name}: adapter {adapter!r} is a LoRA variant (e.g. DoRA), which the fused loss does "
                             "not support; use plain LoRA on lm_head, or leave lm_head out of target_modules")
        lora_b = head.lora_B[adapter]
        if getattr(lora_b, "bias", None) is not None:
            raise ValueError(f"{name}: adapter {adapter!r} has a LoRA bias (lora_bias=True), which the fused loss "
                             "does not support; set lora_bias=False or leave lm_head out of target_modules")
        parts.append((head, adapter, HeadTerm(lora_b.weight)))
    return base_term, parts


def lora_term(parts: list, hidden: torch.Tensor) -> HeadTerm | None:
    """All active LoRA adapters of the head as one kernel head: [s_a * A_a(dropout_a(h))]_a and [B_a]_a."""
    if not parts:
        return None
    hs, ws = [], []
    for layer, adapter, term in parts:
        lora_a = layer.lora_A[adapter]
        x = layer._cast_input_dtype(hidden, lora_a.weight.dtype)  # as peft's forward does
        hs.append(lora_a(layer.lora_dropout[adapter](x)) * layer.scaling[adapter])
        ws.append(term.weight)
    if len(parts) == 1:
        return HeadTerm(ws[0], None, hs[0])
    return HeadTerm(torch.cat(ws, dim=1), None, torch.cat(hs, dim=-1))


def logit_transform(config) -> dict:
    """Kernel options that reproduce what the model's forward does to lm_head's output (empty for most models).

    The same config fields TRL's fused LM head reads: `final_logit_softcapping` (Gemma 2/3), a multiplier
    (`logit_scale`, `output_multiplier`, `lm_head_multiplier`) and `logits_scaling` (Granite divides by it,
    HyperCLOVA X multiplies)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    out = {}
    scale = getattr(text, "logit_scale", None)
    for name in ("output_multiplier", "lm_head_multiplier"):
        scale = scale if scale is not None else getattr(text, name, None)
    if scale is None and getattr(text, "logits_scaling", None) is not None:
        s = text.logits_scaling
        scale = s if getattr(text, "model_type", None) == "hyperclovax" else 1.0 / s
    if scale is not None and float(scale) != 1.0:
        if float(scale) <= 0:
            raise ValueError(f"the model scales its logits by {scale}: the fused loss needs a positive scale")
        out["temperature"] = 1.0 / float(scale)
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        out["softcap"] = float(cap)
    return out


def merge_logit_options(model_options: dict, user_options: dict) -> dict:
    """User kernel options on top of the model's own logit transform; a contradiction is a ValueError."""
    merged = dict(user_options)
    if "softcap" in model_options:
        if "softcap" in user_options or "temperature" in user_options:
            raise ValueError(f"the model already caps its logits (final_logit_softcapping="
                             f"{model_options['softcap']}); drop softcap=/temperature= from the options")
        merged["softcap"] = model_options["softcap"]
    if "temperature" in model_options:
        # z = model logits / T_user = (scale * raw) / T_user
        merged["temperature"] = float(user_options.get("temperature", 1.0)) * model_options["temperature"]
    return merged


def check_router_loss(config, kwargs: dict) -> None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if kwargs.get("output_router_logits", getattr(text, "output_router_logits", False)):
        raise ValueError("this MoE model adds a router load-balancing loss in its forward (output_router_logits), "
                         "which the fused loss does not compute: set output_router_logits=False, or use the "
                         "model's own loss")


def is_dtensor(x: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(x, DTensor)


def check_unsharded(terms: list[HeadTerm], where: str) -> None:
    for term in terms:
        if is_dtensor(term.weight):
            raise ValueError(f"{where}: the lm_head weight is still sharded inside the forward: keep lm_head in the "
                             "root FSDP unit (fully_shard the decoder layers, then the whole model), not on its own")


def register_zero3_externals(owner: nn.Module, weights: list[torch.Tensor]) -> None:
    """Under ZeRO-3, let DeepSpeed gather `weights` for `owner`'s forward and backward (idempotent)."""
    done = owner.__dict__.setdefault("_wdl_zero3_external", set())
    todo = [w for w in weights if hasattr(w, "ds_id") and w.ds_id not in done]
    if not todo:
        return
    import deepspeed  # only ZeRO-3 parameters (ds_id) get here

    for w in todo:
        deepspeed.zero.register_external_parameter(owner, w)
        done.add(w.ds_id)
