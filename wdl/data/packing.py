"""Packing tokenized samples into micro-batches, and the stateful per-optimizer-step loader.

A micro-batch is one row [1, T] of whole samples laid end to end (never split), T <= tokens_per_micro_batch,
rounded up to `pad_to_multiple`; `position_ids` restart at 0 for every sample (packed samples do not attend to
each other), padding is its own segment with labels IGNORE_INDEX and sample_idx -1. See docs/architecture.md.

A step takes the next `global_batch_size` samples of the epoch's seeded permutation, splits them over the ranks
(balanced by tokens, computed identically on every rank) and packs each rank's share. Every rank gets the same
number of micro-batches (padded with empty ones, since FSDP/ZeRO collectives run per forward) and knows the
step's global supervised-token count without communicating.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from wdl.labels import IGNORE_INDEX, count_label_tokens

from .config import DataConfig

STATE_VERSION = 1


@dataclass
class StepBatch:
    """The data of one optimizer step, as one rank sees it."""

    micro_batches: list[dict]  # this rank's micro-batches (same count on every rank)
    global_num_label_tokens: int  # supervised tokens of the whole step, all ranks: the loss divisor's source
    num_samples: int  # samples of the whole step, all ranks
    epoch: int
    index: int  # step index within the epoch


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def pack_first_fit(order: list[int], lengths: np.ndarray, budget: int) -> list[list[int]]:
    """Bins of sample positions (first-fit decreasing by length; ties keep `order`)."""
    ranked = sorted(order, key=lambda i: -int(lengths[i]))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in ranked:
        n = int(lengths[i])
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def split_over_ranks(order: list[int], lengths: np.ndarray, world_size: int) -> list[list[int]]:
    """Longest first to the rank with the fewest tokens so far (ties: lowest rank): same on every rank."""
    heap = [(0, r) for r in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in sorted(order, key=lambda i: -int(lengths[i])):
        tokens, r = heapq.heappop(heap)
        shares[r].append(i)
        heapq.heappush(heap, (tokens + int(lengths[i]), r))
    return shares


def collate(rows: list[dict], budget: int, pad_to_multiple: int, pad_id: int) -> dict:
    """Lay out whole samples (dicts with idx, input_ids, labels) in one [1, T] micro-batch."""
    used = sum(len(r["input_ids"]) for r in rows)
    t_len = max(1, min(max(budget, used), _round_up(max(used, 1), pad_to_multiple)))
    ids = torch.full((1, t_len), pad_id, dtype=torch.long)
    labels = torch.full((1, t_len), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((1, t_len), dtype=torch.long)
    sidx = torch.full((1, t_len), -1, dtype=torch.long)
    t = 0
    for r in rows:
        n = len(r["input_ids"])
        ids[0, t:t + n] = torch.as_tensor(r["input_ids"], dtype=torch.long)
        labels[0, t:t + n] = torch.as_tensor(r["labels"], dtype=torch.long)
        pos[0, t:t + n] = torch.arange(n)
        sidx[0, t:t + n] = int(r["idx"])
        t += n
    pos[0, t:] = torch.arange(t_len - t)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "sample_idx": sidx,
            "num_label_tokens": count_label_tokens(labels)}


class StepLoader:
    """Iterate optimizer steps; a fresh `iter()` continues where the last one stopped (next epoch after the end)."""

    def __init__(self, dataset, cfg: DataConfig, *, rank: int = 0, world_size: int = 1, pad_id: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.dataset, self.cfg, self.rank, self.world_size, self.pad_id = dataset, cfg, rank, world_size, pad_id
        self.lengths = np.asarray(dataset["length"], dtype=np.int64)
        self.label_counts = np.asarray(dataset["num_label_tokens"], dtype=np.int64)
        n = len(self.lengths)
        if n == 0:
            raise ValueError("the training dataset is empty")
        longest = int(self.lengths.max())
        if longest > cfg.tokens_per_micro_batch:
            raise ValueError(f"a sample has {longest} tokens, more than data.tokens_per_micro_batch="
                             f"{cfg.tokens_per_micro_batch}: raise the budget or lower data.max_length")
        gbs = cfg.global_batch_size
        self.steps_per_epoch = n // gbs if cfg.drop_last else math.ceil(n / gbs)
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n} samples make no full step of data.global_batch_size={gbs} with drop_last: "
                             "lower the batch size or set data.drop_last=false")
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def permutation(self, epoch: int) -> np.ndarray:
        n = len(self.lengths)
        if not self.cfg.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.cfg.seed, epoch]).permutation(n)

    def step_samples(self, epoch: int, index: int) -> list[int]:
        gbs = self.cfg.global_batch_size
        return self.permutation(epoch)[index * gbs:(index + 1) * gbs].tolist()

    def build_step(self, epoch: int, index: int) -> StepBatch:
        order = self.step_samples(epoch, index)
        shares = split_over_ranks(order, self.lengths, self.world_size)
        bins_per_rank = [pack_first_fit(s, self.lengths, self.cfg.tokens_per_micro_batch) for s in shares]
        count = max(1, max(len(b) for b in bins_per_rank))
        mine = bins_per_rank[self.rank]
        flat = [i for b in mine for i in b]
        rows = self.dataset[flat] if flat else {"idx": [], "input_ids": [], "labels": []}
        by_pos = {pos: {k: rows[k][j] for k in ("idx", "input_ids", "labels")} for j, pos in enumerate(flat)}
        micro = [collate([by_pos[i] for i in b], self.cfg.tokens_per_micro_batch, self.cfg.pad_to_multiple,
                         self.pad_id) for b in mine]
        while len(micro) < count:  # empty micro-batches keep every rank's forward/backward count equal
            micro.append(collate([], self.cfg.pad_to_multiple, self.cfg.pad_to_multiple, self.pad_id))
        return StepBatch(micro, int(self.label_counts[order].sum()), len(order), epoch, index)

    def __iter__(self) -> Iterator[StepBatch]:
        while self.position < self.steps_per_epoch:
            step = self.build_step(self.epoch, self.position)
            self.position += 1
            yield step
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "epoch": self.epoch, "position": self.position,
                "world_size": self.world_size, "global_batch_size": self.cfg.global_batch_size,
                "seed": self.cfg.seed, "shuffle": self.cfg.shuffle, "num_samples": len(self.lengths),
                "tokens_per_micro_batch": self.cfg.tokens_per_micro_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data loader state version {state.get('version')} is not {STATE_VERSION}")
        mine = self.state_dict()
        for key in ("world_size", "global_batch_size", "seed", "shuffle", "num_samples", "tokens_per_micro_batch"):
            if state[key] != mine[key]:
                raise ValueError(f"cannot resume the data position: {key} was {state[key]} when the checkpoint was "
                                 f"written and is {mine[key]} now; resume with the same setting or start afresh")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def iter_scoring_batches(dataset, tokens_per_micro_batch: int, rank: int = 0, world_size: int = 1,
                         pad_to_multiple: int = 64, pad_id: int = 0) -> Iterator[dict]:
    """Each sample exactly once over all ranks (rank r: samples r, r + W, ...), in order, packed greedily.

    A sample longer than the budget gets a micro-batch of its own.
    """
    lengths = dataset["length"]
    mine = list(range(rank, len(lengths), world_size))
    batch: list[int] = []
    used = 0

    def emit(positions):
        rows = dataset[positions]
        return collate([{k: rows[k][j] for k in ("idx", "input_ids", "labels")} for j in range(len(positions))],
                       tokens_per_micro_batch, pad_to_multiple, pad_id)

    for i in mine:
        n = int(lengths[i])
        if batch and used + n > tokens_per_micro_batch:
            yield emit(batch)
            batch, used = [], 0
        batch.append(i)
        used += n
    if batch:
        yield emit(batch)
