"""Training: one loop for SFT and joint weak/strong training, FSDP2 / DeepSpeed backends, checkpoints, export.

    from wdl.train import TrainConfig, train_phase, TrainSummary
"""

from .config import TrainConfig
from .extract import extract_submodel
from .loop import NonFiniteLossError, Trainer, TrainSummary, train_phase

__all__ = ["NonFiniteLossError", "TrainConfig", "TrainSummary", "Trainer", "extract_submodel", "train_phase"]
