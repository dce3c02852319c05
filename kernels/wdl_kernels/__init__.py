"""wdl_kernels: fused two-head logit-mixing linear cross-entropy.

    out = wdl_kernels.mixed_linear_cross_entropy(hidden, weight, labels, weak_hidden, weak_weight, lam=0.5)
    out.loss.backward()

z = lam * hidden @ weight.T + (1 - lam) * weak_hidden @ weak_weight.T is computed tile by tile and folded into
an online log-sum-exp: no [N, V] tensor exists in any implementation. See README.md for the module wrapper
and the Hugging Face integration (`wdl_kernels.hf`).
"""

from .api import MixedCEOutput, mixed_linear_cross_entropy
from .module import MixedLinearCrossEntropy
from .stats import MixedCEStats

__all__ = ["MixedCEOutput", "MixedCEStats", "MixedLinearCrossEntropy", "mixed_linear_cross_entropy"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # `wdl_kernels.hf` needs transformers: imported on first use, so `import wdl_kernels` stays torch + triton only.
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
