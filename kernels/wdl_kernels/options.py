"""The loss options (everything but the tensors), validated once, and the math they define.

    z_raw = cs * (hidden @ weight.T + bias) + cw * (weak_hidden @ weak_weight.T + weak_bias)
    u     = z_raw / temperature
    z     = softcap * tanh(u / softcap)           (u when softcap is None)
    row loss = (1 - eps) * (lse - z_y) + eps * (lse - mean_j z_j) + z_loss * lse^2     (0 at ignored rows)

with (cs, cw) = (lam, 1 - lam) when a weak head is given and (1, 0) otherwise, lse = logsumexp_j z_j,
eps = label_smoothing. The gradient of a row's loss w.r.t. z_raw_j is

    dL/dz_raw_j = [p_j (1 + 2 z_loss lse) - (1 - eps) [j == y] - eps / V] * (1 - (z_j / softcap)^2) / temperature

Every implementation and mode computes exactly this; `reference.py` computes it with autograd in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REDUCTIONS = ("mean", "sum", "none")
MODES = ("lean", "fast")


@dataclass(frozen=True)
class LossOptions:
    lam: float = 0.5
    ignore_index: int = -100
    reduction: str = "mean"
    temperature: float = 1.0
    softcap: float = 0.0  # 0 = off (the public API says None)
    z_loss: float = 0.0
    label_smoothing: float = 0.0
    with_stats: bool = False

    def __post_init__(self):
        for name in ("lam", "temperature", "softcap", "z_loss", "label_smoothing"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a float, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, float(value))
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1] (weight of the strong logits), got {self.lam}")
        if self.temperature <= 0.0:
            raise ValueError(f"temperature must be > 0 (logits are divided by it), got {self.temperature}")
        if self.softcap < 0.0:
            raise ValueError(f"softcap must be > 0 (or None for no cap), got {self.softcap}")
        if self.z_loss < 0.0:
            raise ValueError(f"z_loss must be >= 0 (the weight of lse^2), got {self.z_loss}")
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {self.label_smoothing}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
            raise ValueError(f"ignore_index must be an int, got {self.ignore_index!r}")

    @property
    def has_softcap(self) -> bool:
        return self.softcap > 0.0

    @property
    def plain(self) -> bool:
        """True when the row loss is the plain NLL (no temperature, cap, z-loss or smoothing)."""
        return (self.temperature == 1.0 and not self.has_softcap and self.z_loss == 0.0
                and self.label_smoothing == 0.0)
