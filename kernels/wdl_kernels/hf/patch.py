"""`apply_fused_loss(model)`: a Hugging Face causal LM whose own forward computes the loss with the fused kernel.

Like Liger-Kernel's `apply_liger_kernel_to_*(model=...)`, the instance's `forward` is replaced, so everything that
calls `model(...)` keeps its semantics: HF Trainer passes `num_items_in_batch` (the patched forward keeps
`**kwargs`, so `model_accepts_loss_kwargs` holds) and scales by the world size itself; accelerate wraps this
forward in autocast for bf16/fp16; FSDP2 / ZeRO-3 / DDP hooks run around it. Without labels (generation,
inference), with `logits_to_keep`, the call goes to the original forward unchanged.

TRL >= 1.16 trainers call `model(..., labels=, fused_lm_head=True)` and install their own fused head over
`model.forward` when the trainer is built. A forward pre-hook routes those calls to this forward instead
(TRL's wrapper passes unknown keyword arguments through to the forward it wrapped), so TRL's `entropy` and
`mean_token_accuracy` come from the wdl kernel, whichever of `apply_fused_loss` and `SFTTrainer(...)` came first.
The settings TRL installed its head with are read from its wrapper (`trl_head_settings`) and honoured or refused.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

from torch import nn

from .heads import (HeadTerm, check_router_loss, check_unsharded, head_terms, logit_transform, lora_term,
                    merge_logit_options, register_zero3_externals)
from .loss import check_options, fused_next_token_loss, next_token_targets
from .outputs import CACHE_FIELD, FusedCausalLMOutput, trl_output

TRL_KEY = "_wdl_fused_lm_head"  # what the pre-hook renames TRL's `fused_lm_head=True` to
_STATE = "_wdl_fused_loss"


def find_causal_lm(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP/DeepSpeed/compile wrappers and peft models."""
    inner = model
    for _ in range(8):
        if hasattr(inner, "get_base_model") and callable(inner.get_base_model):  # peft
            inner = inner.get_base_model()
            continue
        nxt = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
        if not isinstance(nxt, nn.Module):
            break
        inner = nxt
    return inner


def route_trl_fused_head(module, args, kwargs):
    """Forward pre-hook: TRL's `fused_lm_head=True` reaches the patched forward under another name."""
    if kwargs.pop("fused_lm_head", False):
        kwargs[TRL_KEY] = True
    return args, kwargs


def register_trl_route(module: nn.Module) -> None:
    if not module.__dict__.get("_wdl_trl_route"):
        module.register_forward_pre_hook(route_trl_fused_head, with_kwargs=True, prepend=True)
        module._wdl_trl_route = True


TRL_OUTPUTS = frozenset({"log_probs", "entropy", "is_top1"})  # the fields of TRLFusedHeadOutput computed here


def trl_head_settings(module: nn.Module) -> dict:
    """The settings (temperature, outputs, cast_lm_head_to_fp32) of the fused head TRL installed on `module`
    (`trl.trainer.utils.add_fused_lm_head`), found in the forward chain: over or under this patch, or under
    accelerate's autocast wrapper. Empty when TRL installed none (a direct `fused_lm_head=True` call)."""
    state = module.__dict__.get(_STATE) or {}
    todo = [module.__dict__.get("forward"), module.__dict__.get("_original_forward"), state.get("previous")]
    seen = set()
    for fn in todo:
        for _ in range(16):
            fn = getattr(fn, "__func__", fn)
            if fn is None or id(fn) in seen:
                break
            seen.add(id(fn))
            code = getattr(fn, "__code__", None)
            if (code is not None and "trl" in Path(code.co_filename).parts and fn.__closure__ is not None
                    and {"temperature", "outputs"} <= set(code.co_freevars)):
                cells = dict(zip(code.co_freevars, fn.__closure__))
                return {k: cells[k].cell_contents for k in ("temperature", "outputs", "cast_lm_head_to_fp32")
                        if k in cells}
            fn = getattr(fn, "__wrapped__", None) or getattr(fn, "model_forward", None)  # autocast, fp32 outputs
    return {}


def trl_call_options(module: nn.Module, options: dict) -> tuple[dict, bool]:
    """Kernel options for a TRL `fused_lm_head=True` call, and whether the head runs in float32.

    TRL's trainers take `log_probs` as the log-probabilities of the targets under the head's distribution (SFT's
    loss is their negative mean; GRPO/DPO compare them), so what would change them into something else is
    refused: TRL fields not computed here, z-loss and label smoothing. TRL's temperature is applied."""
    head = trl_head_settings(module)
    missing = sorted(set(head.get("outputs", ())) - TRL_OUTPUTS)
    if missing:
        raise ValueError(f"this TRL trainer's fused head asks for {missing} (e.g. DPOTrainer, KTOTrainer), which "
                         "the wdl kernel does not compute: train this model without apply_fused_loss (TRL's own "
                         "fused head then runs), or use SFTTrainer / transformers.Trainer")
    for key in ("z_loss", "label_smoothing"):
        if options.get(key):
            raise ValueError(f"{key}={options[key]} under a TRL trainer: TRL computes its loss from the per-token "
                             f"log-probabilities, which {key} is not. Drop {key} for TRL (SFTConfig("
                             "label_smoothing_factor=...) smooths on TRL's side), or train with transformers.Trainer, "
                             "which uses the model's own loss")
    temperature = float(head.get("temperature", 1.0))
    if temperature != 1.0:
        if options.get("softcap") is not None:
            raise ValueError(f"TRL's fused head divides the capped logits by temperature={temperature}, and this "
                             "model's logits are soft-capped: the kernel divides before the cap. Use temperature=1.0 "
                             "in the TRL config, or train this model without apply_fused_loss")
        options = dict(options, temperature=float(options.get("temperature", 1.0)) * temperature)
    return options, bool(head.get("cast_lm_head_to_fp32", False))


def _head_weights(base: HeadTerm, lora: list) -> list:
    return [base.weight] + ([] if base.bias is None else [base.bias]) + [term.weight for _, _, term in lora]


def model_head(model: nn.Module, user_options: dict, *, allow_lora: bool = True):
    """(base HeadTerm, LoRA parts, kernel options) of a causal LM, checked now so errors come at patch time."""
    base, lora = head_terms(model, allow_lora=allow_lora)
    config = getattr(model, "config", None)
    options = merge_logit_options(logit_transform(config), user_options) if config is not None else user_options
    return base, lora, options


def apply_fused_loss(model: nn.Module, *, ignore_index: int = -100, stats: bool = True,
                     return_logits: bool = False, **options) -> nn.Module:
    """Patch `model` in place (and return it) so that `model(..., labels=...)` computes the fused loss.

    Any HF causal LM with a base model and output embeddings: tied or untied, lm_head bias, peft LoRA on the
    lm_head (exact: the adapter is a second kernel head), FSDP2 (lm_head in the root unit), ZeRO-3, DDP.
    Apply it before wrapping the model for training (`accelerator.prepare`, `Trainer.train()`); a peft model
    or a DDP wrapper may be passed (the HF model inside is patched).

    ignore_index: label value without loss. stats: return per-token statistics (`out.token_stats`).
    return_logits: also build the logits when labels are given (a call may pass `return_logits=` too).
    options: kernel options passed through to `wdl_kernels.mixed_linear_cross_entropy` (impl=, mode=, z_loss=,
    label_smoothing=, temperature=, softcap=, validate=). The model's own logit softcap/scale is applied too.
    """
    hf_model = find_causal_lm(model)
    if "_original_forward" in hf_model.__dict__:
        raise ValueError("the model's forward is already wrapped by accelerate (autocast): apply_fused_loss before "
                         "accelerator.prepare(model) / trainer.train(), or on a fresh model")
    if not hasattr(hf_model, "base_model"):
        raise ValueError(f"{type(hf_model).__name__} is not a Hugging Face PreTrainedModel: pass a causal LM such "
                         "as AutoModelForCausalLM.from_pretrained(...)")
    options = check_options(options)
    model_head(hf_model, options)  # fail now on an unsupported head or contradicting options
    check_router_loss(hf_model.config, {})
    state = hf_model.__dict__.get(_STATE)
    if state is not None:  # patched before: new options, same wrapped forward
        state.update(ignore_index=ignore_index, stats=stats, return_logits=return_logits, options=options)
        return model
    # The forward in place now (the class's, or a wrapper such as TRL's), kept unbound: a deepcopy of the model
    # (TRL's reference models) then calls it on the copy, not on this instance.
    previous = hf_model.forward
    previous = previous.__func__ if getattr(previous, "__self__", None) is hf_model else previous
    hf_model.__dict__[_STATE] = dict(ignore_index=ignore_index, stats=stats, return_logits=return_logits,
                                     options=options, previous=previous)

    # The class forward's signature stays visible (generate() and Trainer inspect it); its **kwargs carries ours.
    @functools.wraps(type(hf_model).forward)
    def forward(self, *args, labels=None, shift_labels=None, num_items_in_batch=None, fused_lm_head=False,
                return_logits=None, **kwargs):
        trl = bool(fused_lm_head or kwargs.pop(TRL_KEY, False))
        if args:
            if len(args) > 1 or "input_ids" in kwargs:
                raise ValueError("pass the model inputs by keyword (input_ids=..., attention_mask=...)")
            kwargs["input_ids"] = args[0]
        keep = kwargs.get("logits_to_keep", 0)
        if (labels is None and shift_labels is None) or not (keep is None or keep == 0):
            if trl:
                raise ValueError("fused_lm_head=True needs labels (or shift_labels) and logits_to_keep=0")
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            kwargs.update({k: v for k, v in extra.items() if v is not None})
            previous = self.__dict__[_STATE]["previous"]
            return previous(self, **kwargs) if isinstance(previous, types.FunctionType) else previous(**kwargs)
        return _fused_forward(self, kwargs, labels, shift_labels, num_items_in_batch, trl, return_logits)

    hf_model.forward = types.MethodType(forward, hf_model)
    register_trl_route(hf_model)
    if model is not hf_model:
        register_trl_route(model)  # e.g. a PeftModel, whose forward calls the inner forward directly
    for owner in {id(hf_model): hf_model, id(model): model}.values():
        # prepend: registered before DeepSpeed's own pre-forward hook runs, whenever deepspeed.initialize came
        owner.register_forward_pre_hook(_zero3_pre_hook, prepend=True)
    return model


def _zero3_pre_hook(module, args):
    weights = _head_weights(*head_terms(find_causal_lm(module)))
    if any(hasattr(w, "ds_id") for w in weights):
        register_zero3_externals(module, weights)


def _fused_forward(self, kwargs, labels, shift_labels, num_items_in_batch, trl, return_logits):
    state = self.__dict__[_STATE]
    ignore_index = kwargs.pop("ignore_index", state["ignore_index"])
    want_logits = state["return_logits"] if return_logits is None else return_logits
    return_dict = kwargs.pop("return_dict", True)
    kwargs.pop("logits_to_keep", None)
    kwargs.setdefault("use_cache", False)
    check_router_loss(self.config, kwargs)
    base, lora, options = model_head(self, state["options"])
    fp32_head = False
    if trl:
        options, fp32_head = trl_call_options(self, options)
    check_unsharded([base] + [t for _, _, t in lora], type(self).__name__)
    out = self.base_model(**kwargs, return_dict=True)
    hidden = out.last_hidden_state
    targets = next_token_targets(labels, shift_labels, ignore_index)
    extra = lora_term(lora, hidden)
    if extra is None:
        strong, weak, lam = HeadTerm(base.weight, base.bias, hidden), None, 1.0
    else:  # z = h W^T + h' B^T = 0.5 * (2h) W^T + 0.5 * (2h') B^T: exact (powers of two)
        strong = HeadTerm(base.weight, None if base.bias is None else 2 * base.bias, 2 * hidden)
        weak, lam = HeadTerm(extra.weight, None, 2 * extra.hidden), 0.5
    fused = fused_next_token_loss(strong, weak, targets, lam=lam, ignore_index=ignore_index,
                                  num_items_in_batch=num_items_in_batch, token_loss=trl,
                                  stats=state["stats"] or trl, options=options, fp32=fp32_head)
    if trl:
        return trl_output(fused, shifted=shift_labels is not None)
    logits = head_logits(self, hidden) if want_logits else None
    result = FusedCausalLMOutput(loss=fused.loss, logits=logits, hidden_states=getattr(out, "hidden_states", None),
                                 attentions=getattr(out, "attentions", None), token_stats=fused.stats,
                                 **{CACHE_FIELD: getattr(out, CACHE_FIELD, None)})
    return result if return_dict else result.to_tuple()


def head_logits(model: nn.Module, hidden):
    """The logits the model's own forward would return (lm_head module, then its scale / softcap)."""
    logits = model.get_output_embeddings()(hidden)
    own = logit_transform(model.config)
    temperature, cap = own.get("temperature"), own.get("softcap")
    if temperature is not None:
        logits = logits / temperature
    if cap is not None:
        logits = cap * (logits / cap).tanh()
    return logits
