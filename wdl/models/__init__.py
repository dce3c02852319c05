"""Models: loading Hugging Face causal LMs, the joint weak/strong model and its loss, HF checkpoint export.

`decoder_hidden_states` / `lm_head_weight` are the kernel library's Hugging Face helpers, re-exported."""

from wdl_kernels.hf import decoder_hidden_states, lm_head_weight

from .export import (
    check_export, check_export_target, check_hf_checkpoint, export_dtype, generation_config_for,
    is_complete_hf_checkpoint, is_wdl_export, save_hf_checkpoint,
)
from .joint import JointModel
from .loading import (
    causal_lm_skeleton, check_model_source, load_causal_lm, load_config, pick_attn_implementation, resolve_dtype,
)
from .loss import FusedMixedCrossEntropy, JointOutput, MixedLoss

__all__ = [
    "FusedMixedCrossEntropy", "JointModel", "JointOutput", "MixedLoss", "causal_lm_skeleton", "check_export",
    "check_export_target", "check_hf_checkpoint", "check_model_source", "decoder_hidden_states", "export_dtype",
    "generation_config_for", "is_complete_hf_checkpoint", "is_wdl_export", "lm_head_weight", "load_causal_lm",
    "load_config", "pick_attn_implementation", "resolve_dtype", "save_hf_checkpoint",
]
