"""Models: loading Hugging Face causal LMs, the joint weak/strong model, HF checkpoint export.

`decoder_hidden_states` / `lm_head_weight` are the kernel library's Hugging Face helpers, re-exported."""

from wdl_kernels.hf import decoder_hidden_states, lm_head_weight

from .export import generation_config_for, is_complete_hf_checkpoint, save_hf_checkpoint
from .joint import JointModel, JointOutput, stats_from_logits
from .loading import (
    load_causal_lm,
    load_config,
    pick_attn_implementation,
    resolve_dtype,
)

__all__ = [
    "JointModel", "JointOutput", "decoder_hidden_states", "generation_config_for", "is_complete_hf_checkpoint",
    "lm_head_weight", "load_causal_lm", "load_config", "pick_attn_implementation", "resolve_dtype",
    "save_hf_checkpoint", "stats_from_logits",
]
