"""Final hidden states and lm_head weights of a Hugging Face causal LM, never its logits.

Temporary local copy of `wdl_kernels.hf` (the kernel library's Hugging Face helpers); switch to those when
they land so the logic lives in one place.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


def lm_head_weight(model: PreTrainedModel) -> nn.Parameter:
    """The output-embedding weight [V, H] (the input embedding itself when tied)."""
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head) weight")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: an lm_head with a bias is not supported by the fused loss")
    return head.weight


def decoder_hidden_states(model: PreTrainedModel, **inputs) -> torch.Tensor:
    """Run the decoder stack (embeddings, blocks, final norm) and return the last hidden states [B, T, H].

    The lm_head is never applied. No KV cache; with `attention_mask` absent transformers derives packed-sequence
    boundaries from position_ids.
    """
    decoder = model.get_decoder()
    if decoder is model:
        raise ValueError(f"{type(model).__name__}: cannot find the decoder stack below the lm_head")
    out = decoder(**inputs, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
