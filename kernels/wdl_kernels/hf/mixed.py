"""MixedCausalLM: Weak-Driven Learning (WMSS) joint training as a model that HF Trainer and TRL train unchanged.

    model = MixedCausalLM(strong, weak, lam=0.5, freeze_weak=False)
    Trainer(model=model, args=..., train_dataset=...).train(); trainer.save_model(out)   # out: the strong model

forward(input_ids, labels=...) returns the cross-entropy of the mixed logits z = lam * z_strong + (1 - lam) *
z_weak, computed by the fused kernel from both models' final hidden states and lm_head weights (no logits),
with HF semantics (label shift, ignore_index, num_items_in_batch, autocast) and the per-token statistics of the
mixed distribution. TRL's `fused_lm_head=True` calls get TRL's fields from the same pass (see patch.py).

It is a PreTrainedModel only so that the Trainer's save path calls its `save_pretrained`: that writes the
strong model as a plain Hugging Face checkpoint (and a trained weak model beside it, in `weak/`). The
sub-models keep their own configs; `config` is the strong model's.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from .heads import (HeadTerm, check_router_loss, check_unsharded, head_terms, logit_transform,
                    register_zero3_externals)
from .loss import check_options, fused_next_token_loss, next_token_targets
from .outputs import FusedCausalLMOutput, trl_output
from .patch import TRL_KEY, find_causal_lm, head_logits, register_trl_route, trl_call_options


def _causal_lm(model, role: str) -> nn.Module:
    inner = find_causal_lm(model)
    if not isinstance(inner, PreTrainedModel) or not hasattr(inner, "get_output_embeddings"):
        raise ValueError(f"{role} must be a Hugging Face causal LM (AutoModelForCausalLM...), got "
                         f"{type(model).__name__}")
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None and getattr(peft_config, "is_prompt_learning", False):
        raise ValueError(f"{role} carries a prompt-learning adapter, which adds virtual tokens in the peft model's "
                         "forward; MixedCausalLM runs the decoders directly: use LoRA (or no adapter)")
    if logit_transform(inner.config):
        raise ValueError(f"{role} transforms its logits (softcap / logit scale: {logit_transform(inner.config)}); "
                         "mixing such models is not supported")
    check_router_loss(inner.config, {})
    head_terms(inner, allow_lora=False)
    return inner


class MixedCausalLM(PreTrainedModel):
    base_model_prefix = "strong"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    # The sub-models chose their attention implementation already; accept whatever their config says.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    def __init__(self, strong: nn.Module, weak: nn.Module, *, lam: float = 0.5, freeze_weak: bool = False,
                 ignore_index: int = -100, stats: bool = True, **options):
        """strong, weak: HF causal LMs (peft LoRA models allowed, not on lm_head) with one vocabulary.
        lam: weight of the strong logits. freeze_weak: the weak model is a fixed function (no grad, eval mode).
        options: kernel options (impl=, mode=, z_loss=, label_smoothing=, ...), as for apply_fused_loss."""
        if weak is None or strong is weak:
            raise ValueError("MixedCausalLM needs two distinct models; for one model use apply_fused_loss(model)")
        s, w = _causal_lm(strong, "strong"), _causal_lm(weak, "weak")
        if not (isinstance(lam, (int, float)) and math.isfinite(lam) and 0.0 <= lam <= 1.0):
            raise ValueError(f"lam must be a float in [0, 1] (weight of the strong logits), got {lam!r}")
        vs, vw = output_rows(s), output_rows(w)
        if vs != vw:
            raise ValueError(f"strong and weak need the same vocabulary: their lm_heads have {vs} and {vw} rows")
        super().__init__(s.config)
        self.strong, self.weak = strong, weak
        self.lam, self.freeze_weak, self.ignore_index, self.stats = float(lam), bool(freeze_weak), ignore_index, stats
        self.options = check_options(options)
        if self.freeze_weak:
            weak.requires_grad_(False)
            weak.eval()
        self.post_init()
        # HF Trainer counts num_items_in_batch over labels[..., 1:] only for causal-LM losses.
        self.loss_type = "ForCausalLM"
        register_trl_route(self)
        self.register_forward_pre_hook(_zero3_pre_hook, prepend=True)

    def init_weights(self):
        pass  # both sub-models arrive initialized (or loaded); post_init must not touch their weights

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_weak:
            self.weak.eval()  # a frozen weak model never runs dropout
        return self

    def get_input_embeddings(self):
        return self.strong.get_input_embeddings()

    def get_output_embeddings(self):
        return self.strong.get_output_embeddings()

    @property
    def generation_config(self):
        return find_causal_lm(self.strong).generation_config  # what TRL and the saved checkpoint use

    @generation_config.setter
    def generation_config(self, value):
        find_causal_lm(self.strong).generation_config = value

    def activation_checkpointing_enable(self, *args, **kwargs):
        for model in (self.strong,) if self.freeze_weak else (self.strong, self.weak):
            find_causal_lm(model).activation_checkpointing_enable(*args, **kwargs)

    def activation_checkpointing_disable(self):
        for model in (self.strong, self.weak):
            find_causal_lm(model).activation_checkpointing_disable()

    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, fused_lm_head=False,
                return_logits=False, **kwargs):
        # shift_labels stays in **kwargs: Trainer takes every forward parameter named *label* for a label column.
        shift_labels = kwargs.pop("shift_labels", None)
        trl = bool(fused_lm_head or kwargs.pop(TRL_KEY, False))
        return_dict = kwargs.pop("return_dict", True)
        ignore_index = kwargs.pop("ignore_index", self.ignore_index)
        kwargs.pop("logits_to_keep", None)
        inputs = {k: v for k, v in dict(kwargs, input_ids=input_ids, attention_mask=attention_mask).items()
                  if v is not None}
        inputs["use_cache"] = False
        strong, weak = find_causal_lm(self.strong), find_causal_lm(self.weak)
        weak_grad = torch.is_grad_enabled() and not self.freeze_weak
        if labels is None and shift_labels is None:
            if trl:
                raise ValueError("fused_lm_head=True needs labels (or shift_labels)")
            # No loss requested: the mixed logits themselves (materialized, as any causal LM's forward does).
            zs = strong(**inputs).logits
            with torch.set_grad_enabled(weak_grad):
                zw = weak(**inputs).logits
            out = FusedCausalLMOutput(logits=self.lam * zs + (1.0 - self.lam) * zw)
            return out if return_dict else out.to_tuple()
        (bs, _), (bw, _) = head_terms(strong), head_terms(weak)
        check_unsharded([bs, bw], type(self).__name__)
        hs = strong.base_model(**inputs, return_dict=True).last_hidden_state
        with torch.set_grad_enabled(weak_grad):
            hw = weak.base_model(**inputs, return_dict=True).last_hidden_state
        targets = next_token_targets(labels, shift_labels, ignore_index)
        options, fp32_head = trl_call_options(self, self.options) if trl else (self.options, False)
        fused = fused_next_token_loss(HeadTerm(bs.weight, bs.bias, hs), HeadTerm(bw.weight, bw.bias, hw), targets,
                                      lam=self.lam, ignore_index=ignore_index, num_items_in_batch=num_items_in_batch,
                                      token_loss=trl, stats=self.stats or trl, options=options, fp32=fp32_head)
        if trl:
            return trl_output(fused, shifted=shift_labels is not None)
        logits = None
        if return_logits:
            logits = self.lam * head_logits(strong, hs) + (1.0 - self.lam) * head_logits(weak, hw)
        out = FusedCausalLMOutput(loss=fused.loss, logits=logits, token_stats=fused.stats)
        return out if return_dict else out.to_tuple()

    def save_pretrained(self, save_directory, state_dict=None, **kwargs):
        """The strong model as a plain HF checkpoint in `save_directory`; a trained weak model in `weak/`.
        `state_dict` (MixedCausalLM keys, as the Trainer gathers it under FSDP/DeepSpeed) is split by prefix."""
        kwargs.pop("save_original_format", None)
        self.strong.save_pretrained(save_directory, state_dict=_prefixed(state_dict, "strong."), **kwargs)
        if not self.freeze_weak:
            self.weak.save_pretrained(Path(save_directory) / "weak", state_dict=_prefixed(state_dict, "weak."),
                                      **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also takes the strong model's own (plain checkpoint) keys, as Trainer's resume/best-model loading passes
        them; the weak model is then left as it is (build the MixedCausalLM with the weak from `checkpoint/weak`)."""
        if any(k.startswith(("strong.", "weak.")) for k in state_dict):
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        return self.strong.load_state_dict(state_dict, strict=strict, assign=assign)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise ValueError("MixedCausalLM is built from two loaded models: MixedCausalLM(AutoModelForCausalLM."
                         "from_pretrained(strong_path), AutoModelForCausalLM.from_pretrained(weak_path), lam=...)")


def output_rows(model: nn.Module) -> int:
    weight = head_terms(model, allow_lora=False)[0].weight
    return getattr(weight, "ds_shape", weight.shape)[0]  # a ZeRO-3 partition is empty; ds_shape is the full shape


def _prefixed(state_dict, prefix: str):
    if state_dict is None:
        return None
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _zero3_pre_hook(module: MixedCausalLM, args):
    weights = []
    for sub in (module.strong, module.weak):
        base, _ = head_terms(find_causal_lm(sub))
        weights += [base.weight] + ([] if base.bias is None else [base.bias])
    if any(hasattr(w, "ds_id") for w in weights):
        register_zero3_externals(module, weights)
