"""A stand-in for wdl.data's StepLoader in the micro-batch format of docs/architecture.md.

The global content of every optimizer step does not depend on the number of ranks: a step is K packed
micro-batches and rank r takes micro-batches r, r + W, ... so one process (W=1) and two (W=2) see the same
global batch. Epochs reshuffle with seed + epoch; the state is (epoch, position).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wdl.labels import IGNORE_INDEX


def make_samples(n: int, vocab: int, *, seed: int = 0, min_len: int = 8, max_len: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(5, vocab, (length,), generator=g)
        labels = torch.full((length,), IGNORE_INDEX)
        start = length // 2  # "completion" = second half: labels[t] = ids[t + 1] there
        labels[start - 1 : length - 1] = ids[start:]
        out.append({"idx": 1000 + i, "input_ids": ids, "labels": labels})
    return out


def pack(samples: list[dict], tokens: int) -> dict:
    ids = torch.zeros(1, tokens, dtype=torch.long)
    labels = torch.full((1, tokens), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros(1, tokens, dtype=torch.long)
    sidx = torch.full((1, tokens), -1, dtype=torch.long)
    t = 0
    for s in samples:
        n = len(s["input_ids"])
        ids[0, t : t + n] = s["input_ids"]
        labels[0, t : t + n] = s["labels"]
        pos[0, t : t + n] = torch.arange(n)
        sidx[0, t : t + n] = s["idx"]
        t += n
    pos[0, t:] = torch.arange(tokens - t)  # padding: its own segment, no labels
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "sample_idx": sidx,
            "num_label_tokens": int((labels != IGNORE_INDEX).sum())}


def pack_all(samples: list[dict], tokens: int) -> list[dict]:
    batches, cur, used = [], [], 0
    for s in samples:
        n = len(s["input_ids"])
        if cur and used + n > tokens:
            batches.append(pack(cur, tokens))
            cur, used = [], 0
        cur.append(s)
        used += n
    if cur:
        batches.append(pack(cur, tokens))
    return batches


@dataclass
class FakeDataConfig:
    tokens_per_micro_batch: int = 64
    micro_batches_per_step: int = 4  # global, over all ranks
    seed: int = 0


@dataclass
class StepBatch:
    micro_batches: list[dict]
    global_num_label_tokens: int
    num_samples: int


class FakeStepLoader:
    def __init__(self, samples: list[dict], cfg: FakeDataConfig, *, rank: int = 0, world_size: int = 1):
        if cfg.micro_batches_per_step % world_size:
            raise ValueError("micro_batches_per_step must be a multiple of world_size")
        self.samples, self.cfg, self.rank, self.world = samples, cfg, rank, world_size
        self.epoch, self.position = 0, 0

    def _steps(self, epoch: int) -> list[list[dict]]:
        order = torch.randperm(len(self.samples), generator=torch.Generator().manual_seed(self.cfg.seed + epoch))
        mbs = pack_all([self.samples[i] for i in order.tolist()], self.cfg.tokens_per_micro_batch)
        k = self.cfg.micro_batches_per_step
        return [mbs[i : i + k] for i in range(0, len(mbs) - k + 1, k)]

    def __len__(self) -> int:
        return len(self._steps(0))

    def __iter__(self):
        steps = self._steps(self.epoch)
        while self.position < len(steps):
            mbs = steps[self.position]
            self.position += 1
            samples = sum(int(torch.unique(m["sample_idx"][m["sample_idx"] >= 0]).numel()) for m in mbs)
            yield StepBatch(mbs[self.rank :: self.world], sum(m["num_label_tokens"] for m in mbs), samples)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


def use_fake_loader(monkeypatch=None) -> None:
    """Route wdl.train's loader construction to FakeStepLoader (dataset = list of samples)."""
    import wdl.train.loop as loop

    if monkeypatch is not None:
        monkeypatch.setattr(loop, "StepLoader", FakeStepLoader)
    else:
        loop.StepLoader = FakeStepLoader
