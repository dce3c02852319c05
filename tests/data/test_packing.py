"""Packing and the per-step loader: invariants, rank sharding, determinism, exact resume, scoring pass."""

from __future__ import annotations

import datasets
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wdl.data import DataConfig, StepLoader, iter_scoring_batches
from wdl.labels import IGNORE_INDEX


def fake_dataset(lengths, seed=0) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = {"idx": [], "input_ids": [], "labels": [], "num_label_tokens": [], "length": []}
    for i, n in enumerate(lengths):
        ids = torch.randint(5, 100, (n,), generator=g).tolist()
        labels = [ids[t + 1] if t >= n // 2 else IGNORE_INDEX for t in range(n - 1)] + [IGNORE_INDEX]
        rows["idx"].append(1000 + i)
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["num_label_tokens"].append(sum(y != IGNORE_INDEX for y in labels))
        rows["length"].append(n)
    return datasets.Dataset.from_dict(rows)


def cfg(**kw) -> DataConfig:
    base = dict(max_length=64, tokens_per_micro_batch=128, global_batch_size=8, pad_to_multiple=16, seed=3)
    base.update(kw)
    return DataConfig(**base)


def samples_in(mb) -> dict[int, torch.Tensor]:
    """idx -> its tokens, checking the layout invariants of one micro-batch."""
    ids, labels, pos, sidx = mb["input_ids"][0], mb["labels"][0], mb["position_ids"][0], mb["sample_idx"][0]
    assert ids.shape == labels.shape == pos.shape == sidx.shape and mb["input_ids"].shape[0] == 1
    assert mb["num_label_tokens"] == int((labels != IGNORE_INDEX).sum())
    out, t = {}, 0
    while t < len(ids) and sidx[t] >= 0:
        idx = int(sidx[t])
        n = int((sidx == idx).sum())
        assert torch.equal(pos[t:t + n], torch.arange(n)), "position ids restart at 0 for every sample"
        assert labels[t + n - 1] == IGNORE_INDEX, "no target across a sample boundary"
        out[idx] = ids[t:t + n]
        t += n
    assert (sidx[t:] == -1).all() and (labels[t:] == IGNORE_INDEX).all(), "padding is unlabelled"
    return out


def epoch_steps(loader):
    return list(iter(loader))


def test_every_sample_once_per_epoch_and_budget():
    ds = fake_dataset([5 + (7 * i) % 60 for i in range(50)])
    loader = StepLoader(ds, cfg())
    assert len(loader) == 7  # ceil(50 / 8)
    seen = []
    for step in epoch_steps(loader):
        for mb in step.micro_batches:
            assert mb["input_ids"].shape[1] <= 128 and mb["input_ids"].shape[1] % 16 == 0
            got = samples_in(mb)
            for idx, toks in got.items():
                assert toks.tolist() == ds[idx - 1000]["input_ids"]
            seen += got
        assert step.global_num_label_tokens == sum(mb["num_label_tokens"] for mb in step.micro_batches)
    assert sorted(seen) == sorted(ds["idx"])


def test_epochs_reshuffle_and_seed_is_deterministic():
    ds = fake_dataset([10 + i % 30 for i in range(40)])
    order = lambda loader: [list(samples_in(mb)) for s in epoch_steps(loader) for mb in s.micro_batches]  # noqa: E731
    a, b = StepLoader(ds, cfg()), StepLoader(ds, cfg())
    first_a, first_b = order(a), order(b)
    assert first_a == first_b
    assert order(a) != first_a  # the next epoch is another permutation
    assert order(StepLoader(ds, cfg(seed=4))) != first_a
    assert order(StepLoader(ds, cfg(shuffle=False)))[0][0] in range(1000, 1040)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_split_each_step_and_agree_on_counts(world):
    ds = fake_dataset([3 + (11 * i) % 61 for i in range(37)])
    single = epoch_steps(StepLoader(ds, cfg()))
    per_rank = [epoch_steps(StepLoader(ds, cfg(), rank=r, world_size=world)) for r in range(world)]
    for k, step in enumerate(single):
        ranks = [steps[k] for steps in per_rank]
        assert len({len(s.micro_batches) for s in ranks}) == 1, "same micro-batch count on every rank"
        assert {s.global_num_label_tokens for s in ranks} == {step.global_num_label_tokens}
        union = [i for s in ranks for mb in s.micro_batches for i in samples_in(mb)]
        assert sorted(union) == sorted(i for mb in step.micro_batches for i in samples_in(mb))


def test_exact_resume_mid_epoch_and_across_epochs():
    ds = fake_dataset([4 + (5 * i) % 50 for i in range(30)])
    ref = StepLoader(ds, cfg())
    want = epoch_steps(ref) + epoch_steps(ref)
    for stop in (2, 4, 6):  # 4 steps per epoch: mid-epoch, at the boundary, in the second epoch
        loader = StepLoader(ds, cfg())
        it, taken = iter(loader), 0
        while taken < stop:
            step = next(it, None)
            if step is None:
                it = iter(loader)
                continue
            taken += 1
        state = loader.state_dict()
        fresh = StepLoader(ds, cfg())
        fresh.load_state_dict(state)
        rest = [s for _ in range(3) for s in epoch_steps(fresh)][: len(want) - stop]
        for got, exp in zip(rest, want[stop:]):
            assert (got.epoch, got.index) == (exp.epoch, exp.index)
            for x, y in zip(got.micro_batches, exp.micro_batches):
                assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "labels", "position_ids", "sample_idx"))


def test_resume_refuses_a_different_setup():
    ds = fake_dataset([10] * 20)
    state = StepLoader(ds, cfg()).state_dict()
    for other, key in ((StepLoader(ds, cfg(global_batch_size=4)), "global_batch_size"),
                       (StepLoader(ds, cfg(), rank=0, world_size=2), "world_size"),
                       (StepLoader(ds, cfg(seed=9)), "seed")):
        with pytest.raises(ValueError, match=key):
            other.load_state_dict(state)


def test_drop_last_and_too_long_samples():
    ds = fake_dataset([10] * 20)
    assert len(StepLoader(ds, cfg(drop_last=True))) == 2 and len(StepLoader(ds, cfg())) == 3
    with pytest.raises(ValueError, match="no full step"):
        StepLoader(fake_dataset([10] * 5), cfg(drop_last=True))
    with pytest.raises(ValueError, match="more than data.tokens_per_micro_batch"):
        StepLoader(fake_dataset([200]), cfg(max_length=64))


@pytest.mark.parametrize("world", [1, 3])
def test_scoring_pass_sees_each_sample_once(world):
    ds = fake_dataset([5 + (13 * i) % 70 for i in range(25)])
    seen = []
    for rank in range(world):
        for mb in iter_scoring_batches(ds, 100, rank, world):
            seen += samples_in(mb)
    assert sorted(seen) == sorted(ds["idx"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(lengths=st.lists(st.integers(2, 64), min_size=1, max_size=40), gbs=st.integers(1, 12),
       world=st.integers(1, 4), budget=st.sampled_from([64, 100, 256]))
def test_packing_invariants_fuzzed(lengths, gbs, world, budget):
    ds = fake_dataset(lengths)
    c = cfg(global_batch_size=gbs, tokens_per_micro_batch=budget)
    loaders = [StepLoader(ds, c, rank=r, world_size=world) for r in range(world)]
    seen = []
    for steps in zip(*(epoch_steps(x) for x in loaders)):
        assert len({len(s.micro_batches) for s in steps}) == 1
        for s in steps:
            for mb in s.micro_batches:
                assert mb["input_ids"].shape[1] <= budget
                seen += samples_in(mb)
    assert sorted(seen) == sorted(ds["idx"])
