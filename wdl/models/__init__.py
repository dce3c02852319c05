"""Models: loading Hugging Face causal LMs, the joint weak/strong model and its loss, HF checkpoint export.

`decoder_hidden_states` / `lm_head_weight` are the kernel library's Hugging Face helpers, re-exported."""

from wdl_kernels.hf import decoder_hidden_states, lm_head_weight

from .export import (export_dtype, generation_config_for, is_complete_hf_checkpoint, save_hf_checkpoint,
                     verify_hf_checkpoint)
from .joint import JointModel
from .loading import causal_lm_skeleton, load_causal_lm, load_config, pick_attn_implementation, resolve_dtype
from .loss import FusedMixedCrossEntropy, JointOutput, MixedLoss

__all__ = [
    "FusedMixedCrossEntropy", "JointModel", "JointOutput", "MixedLoss", "causal_lm_skeleton", "decoder_hidden_states",
    "export_dtype", "generation_config_for", "is_complete_hf_checkpoint", "lm_head_weight", "load_causal_lm",
    "load_config", "pick_attn_implementation", "resolve_dtype", "save_hf_checkpoint", "verify_hf_checkpoint",
]
