"""Per-sample statistics of a model over a tokenized dataset: mean entropy, NLL and logit margin of the
next-token distribution over each sample's label (completion) tokens, Eq. 7 of the paper.

Forward-only fused path: the model runs to its final hidden states and the kernel reduces them with the lm_head
weight tile by tile (no [N, V] logits, nothing kept for backward). Micro-batches are packed by the data
package's one-pass iterator and sharded over ranks; rank 0 merges the per-sample sums by idx and writes

    {"idx": int, "entropy": float, "nll": float, "margin": float, "n_tokens": int}    one line per sample

to `out_path` atomically. An existing `out_path` is complete (atomic write) and is reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from wdl.data import iter_scoring_batches
from wdl.distributed import all_gather_objects, barrier, init_distributed
from wdl.io import atomic_write_jsonl, read_jsonl
from wdl.labels import IGNORE_INDEX
from wdl.models import JointModel, load_causal_lm, resolve_dtype
from wdl.progress import Progress

FIELDS = ("entropy", "nll", "margin")


@torch.no_grad()
def score_batches(model: JointModel, batches: Iterable[dict], device: torch.device,
                  progress: Progress | None = None) -> dict[int, list[float]]:
    """idx -> [entropy sum, nll sum, margin sum, label tokens] over the micro-batches given (`progress` counts
    the samples)."""
    sums: dict[int, list[float]] = {}
    for mb in batches:
        inputs = {k: mb[k].to(device) for k in ("input_ids", "labels", "position_ids")}
        stats = model(**inputs).stats
        labels = mb["labels"].reshape(-1)
        valid = labels != IGNORE_INDEX
        sidx = mb["sample_idx"].reshape(-1)
        present = torch.unique(sidx[sidx >= 0])
        for i in present.tolist():  # samples without label tokens still get a row (n_tokens 0)
            sums.setdefault(int(i), [0.0, 0.0, 0.0, 0])
        if progress is not None:
            progress.update(len(present))
        if not bool(valid.any()):
            continue
        ids, inverse = torch.unique(sidx[valid], return_inverse=True)
        values = torch.stack([stats.entropy, stats.nll, stats.margin]).cpu().double()[:, valid]
        per = torch.zeros(3, len(ids), dtype=torch.float64).index_add_(1, inverse, values)
        counts = torch.bincount(inverse, minlength=len(ids))
        for j, i in enumerate(ids.tolist()):
            acc = sums[int(i)]
            acc[0] += float(per[0, j])
            acc[1] += float(per[1, j])
            acc[2] += float(per[2, j])
            acc[3] += int(counts[j])
    return sums


def merge_sums(parts: Iterable[dict[int, list[float]]]) -> dict[int, dict]:
    total: dict[int, list[float]] = {}
    for part in parts:
        for i, (e, n, m, c) in part.items():
            acc = total.setdefault(int(i), [0.0, 0.0, 0.0, 0])
            acc[0] += e
            acc[1] += n
            acc[2] += m
            acc[3] += c
    out = {}
    for i in sorted(total):
        e, n, m, c = total[i]
        d = max(c, 1)
        out[i] = {"idx": i, "entropy": e / d, "nll": n / d, "margin": m / d, "n_tokens": int(c)}
    return out


def read_scores(path: Path) -> dict[int, dict]:
    """idx -> score row of a file `score_dataset` wrote."""
    rows = read_jsonl(path, fix="delete it and its phase marker (phases/score_*.json) to score again")
    return {int(r["idx"]): r for r in rows}


def score_dataset(
    model: str | Path,
    dataset,
    *,
    out_path: Path,
    tokens_per_micro_batch: int,
    dtype: str = "auto",
    attn_implementation: str | None = None,
) -> dict[int, dict]:
    """Score every sample of `dataset` with `model` (an HF checkpoint); returns {idx: row} on every rank."""
    out_path = Path(out_path)
    if out_path.is_file():
        return read_scores(out_path)
    ctx = init_distributed()
    lm = load_causal_lm(model, dtype=resolve_dtype(dtype, ctx.device), attn_implementation=attn_implementation,
                        device=ctx.device)
    lm.eval()
    joint = JointModel(lm)
    batches = iter_scoring_batches(dataset, tokens_per_micro_batch, ctx.rank, ctx.world_size)
    # rank 0 reports its own shard (every rank holds about the same number of samples)
    with Progress(f"scoring {out_path.stem}", total=len(range(ctx.rank, len(dataset), ctx.world_size)),
                  unit="samples", enabled=ctx.is_main) as progress:
        local = score_batches(joint, batches, ctx.device, progress)
    merged = merge_sums(all_gather_objects(local))
    if ctx.is_main:
        atomic_write_jsonl(out_path, list(merged.values()))
    barrier()
    return merged
