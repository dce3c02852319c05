"""`train.backend` -> the backend class, and the one function that builds a backend with its models."""

from __future__ import annotations

from wdl.distributed import DistContext
from wdl.models import FusedMixedCrossEntropy, JointModel

from .backend import TrainBackend
from .config import TrainConfig
from .deepspeed_backend import DeepSpeedBackend
from .torch_backend import FSDP2Backend, SingleBackend

BACKENDS: dict[str, type[TrainBackend]] = {"single": SingleBackend, "fsdp2": FSDP2Backend,
                                           "deepspeed": DeepSpeedBackend}


def make_backend(cfg: TrainConfig, dist: DistContext) -> TrainBackend:
    """The backend `cfg.backend` names, without models yet (`setup` takes a JointModel built elsewhere)."""
    return BACKENDS[cfg.backend](cfg, dist)


def build_backend(cfg: TrainConfig, dist: DistContext, *, strong_model: str, weak_model: str | None = None,
                  ) -> TrainBackend:
    """The backend with its JointModel: the sub-models loaded as this backend needs them, the fused loss."""
    backend = make_backend(cfg, dist)
    strong, weak = backend.load_models(strong_model, weak_model)
    loss = FusedMixedCrossEntropy(impl=cfg.kernel_impl, mode=cfg.kernel_mode)
    backend.setup(JointModel(strong, weak, lam=cfg.lam, freeze_weak=cfg.freeze_weak and weak is not None, loss=loss))
    return backend
