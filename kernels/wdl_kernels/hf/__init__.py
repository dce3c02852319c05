"""The fused loss inside Hugging Face causal LMs, for stock transformers.Trainer, TRL and any training loop.

    from wdl_kernels.hf import apply_fused_loss, MixedCausalLM
    apply_fused_loss(model)                       # model(..., labels=...) now computes the fused loss, no logits
    mixed = MixedCausalLM(strong, weak, lam=0.5)  # WMSS joint training: the loss of the mixed logits

Both return `FusedCausalLMOutput` (a `CausalLMOutputWithPast` with `token_stats`, per-token entropy, margin,
accuracy, ...) and answer TRL's `fused_lm_head=True` calls. `token_metrics` is a ready `compute_metrics` for
`Trainer.evaluate()` on them. This subpackage needs transformers (and peft only for LoRA heads); `import
wdl_kernels` alone does not import it.
"""

try:
    import transformers  # noqa: F401
except ImportError as e:  # `pip install ./kernels` brings torch and triton only
    raise ImportError("wdl_kernels.hf needs transformers: pip install 'transformers>=4.56' (the kernel itself, "
                      "wdl_kernels.mixed_linear_cross_entropy, does not)") from e

from .heads import decoder_hidden_states, lm_head_weight  # noqa: E402
from .mixed import MixedCausalLM  # noqa: E402
from .outputs import FusedCausalLMOutput, TRLFusedHeadOutput, token_metrics  # noqa: E402
from .patch import apply_fused_loss  # noqa: E402

__all__ = ["FusedCausalLMOutput", "MixedCausalLM", "TRLFusedHeadOutput", "apply_fused_loss", "decoder_hidden_states",
           "lm_head_weight", "token_metrics"]
