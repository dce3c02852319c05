"""Child process for the multi-rank scoring test: score_dataset over fake packed batches.

    python score_script.py MODEL_DIR OUT_PATH N_SAMPLES VOCAB      (or under torchrun)

The data package's one-pass iterator is replaced by a stand-in with its contract: rank r packs every
world_size-th sample (all samples are scored exactly once over the ranks).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_data import make_samples, pack_all  # noqa: E402


def iter_scoring_batches(dataset, tokens_per_micro_batch: int, rank: int, world_size: int):
    yield from pack_all(list(dataset)[rank::world_size], tokens_per_micro_batch)


def main() -> None:
    model_dir, out_path, n, vocab = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    sys.modules["wdl.data"] = types.SimpleNamespace(iter_scoring_batches=iter_scoring_batches)
    from wdl.scoring import score_dataset

    scores = score_dataset(model_dir, make_samples(n, vocab, seed=3), out_path=out_path, tokens_per_micro_batch=64,
                           dtype="fp32")
    assert len(scores) == n, len(scores)  # every rank returns the merged scores
    from wdl.distributed import leave_distributed

    leave_distributed()  # a barrier, then the teardown


if __name__ == "__main__":
    main()
