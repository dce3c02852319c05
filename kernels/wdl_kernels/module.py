"""nn.Module wrapper around mixed_linear_cross_entropy (options fixed and validated at construction)."""

from __future__ import annotations

import torch
from torch import nn

from .api import MixedCEOutput, choose_mode, mixed_linear_cross_entropy
from .backends import BUILTIN, registered_backends
from .options import LossOptions
from .validation import check_token_chunk


class MixedLinearCrossEntropy(nn.Module):
    """Loss module: `forward(hidden, weight, labels, weak_hidden=None, weak_weight=None, bias=None,
    weak_bias=None, num_items=None) -> MixedCEOutput`.

    Holds no parameters: pass the lm_head weights (strong, and optionally weak) at call time, so the module can
    sit beside any model (tied embeddings included) without owning or copying its weights. Keyword options are
    those of `mixed_linear_cross_entropy`.
    """

    def __init__(self, lam: float = 0.5, *, ignore_index: int = -100, reduction: str = "mean",
                 return_stats: bool = False, impl: str = "auto", mode: str = "lean", temperature: float = 1.0,
                 softcap: float | None = None, z_loss: float = 0.0, label_smoothing: float = 0.0,
                 return_lse: bool = False, validate: bool = True, token_chunk: int | None = None):
        super().__init__()
        opts = LossOptions(lam=lam, ignore_index=ignore_index, reduction=reduction, temperature=temperature,
                           softcap=0.0 if softcap is None else softcap, z_loss=z_loss,
                           label_smoothing=label_smoothing)
        if softcap is not None and not opts.has_softcap:
            raise ValueError(f"softcap must be > 0 (or None for no cap), got {softcap}")
        if impl not in BUILTIN and impl not in registered_backends():
            raise ValueError(f"impl must be one of {BUILTIN} or a name given to register_backend, got {impl!r}")
        choose_mode(mode, reduction, return_lse)  # validates mode
        check_token_chunk(token_chunk)
        self.options = dict(lam=opts.lam, ignore_index=ignore_index, reduction=reduction, return_stats=return_stats,
                            impl=impl, mode=mode, temperature=opts.temperature, softcap=softcap, z_loss=opts.z_loss,
                            label_smoothing=opts.label_smoothing, return_lse=return_lse, validate=validate,
                            token_chunk=token_chunk)

    def forward(self, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                weak_hidden: torch.Tensor | None = None, weak_weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None, weak_bias: torch.Tensor | None = None,
                num_items: float | torch.Tensor | None = None) -> MixedCEOutput:
        return mixed_linear_cross_entropy(hidden, weight, labels, weak_hidden, weak_weight, bias=bias,
                                          weak_bias=weak_bias, num_items=num_items, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items() if k in
                         ("lam", "ignore_index", "reduction", "impl", "mode"))
