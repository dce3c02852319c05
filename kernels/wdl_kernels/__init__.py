"""wdl_kernels: fused two-head logit-mixing linear cross-entropy.

    out = wdl_kernels.mixed_linear_cross_entropy(hidden, weight, labels, weak_hidden, weak_weight, lam=0.5)
    out.loss.backward()

z = lam * hidden @ weight.T + (1 - lam) * weak_hidden @ weak_weight.T is computed tile by tile and folded into
an online log-sum-exp: no [N, V] tensor exists in any implementation. `mode="fast"` computes the gradients in
the forward (6NVH); `mode="lean"` (default) recomputes them in the backward with a small workspace. See
README.md for the module wrapper and the Hugging Face integration (`wdl_kernels.hf`).
"""

from .api import MixedCEOutput, mixed_linear_cross_entropy
from .backends import register_backend
from .gemm import gemm_paths
from .module import MixedLinearCrossEntropy
from .stats import MixedCEStats

__all__ = ["MixedCEOutput", "MixedCEStats", "MixedLinearCrossEntropy", "gemm_paths", "mixed_linear_cross_entropy",
           "register_backend"]
__version__ = "0.2.0"


def __getattr__(name: str):
    # `wdl_kernels.hf` works after a plain `import wdl_kernels` without importing it (and its optional
    # dependencies) up front.
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
