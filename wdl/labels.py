"""The label convention every stage shares (data, models, training, scoring).

`labels[t]` is the id the model must predict at position `t`, i.e. the token at `t + 1` of the same sequence,
when that token is supervised, and `IGNORE_INDEX` otherwise. Labels are shifted once, at tokenization; nothing
downstream shifts again. The kernel receives `ignore_index=IGNORE_INDEX` explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

IGNORE_INDEX = -100  # Hugging Face's convention, and the kernel's default


def next_token_labels(ids: Sequence[int], supervised: Sequence[bool]) -> list[int]:
    """Labels of one sequence: ids[t + 1] where token t + 1 is supervised; the last position has no target."""
    return [ids[t + 1] if supervised[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)] + [IGNORE_INDEX]


def count_label_tokens(labels: Sequence[int] | torch.Tensor) -> int:
    """The number of supervised positions: the divisor of the token-weighted loss."""
    if isinstance(labels, torch.Tensor):
        return int((labels != IGNORE_INDEX).sum())
    return sum(1 for y in labels if y != IGNORE_INDEX)
