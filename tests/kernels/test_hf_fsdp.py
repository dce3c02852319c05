"""FSDP2 (2 gloo processes, CPU): the fused HF loss inside the root unit gives the single-process loss and grads."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.kernels.test_hf import batch, tiny_model
from wdl_kernels.hf import fused_causal_lm_loss, shift_labels

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, tied: bool, out_path: str):
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ids, labels, _ = batch(seed=7, b=4)
        count = int((shift_labels(labels) != -100).sum())
        model = tiny_model(tied)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        mine = slice(rank * 2, rank * 2 + 2)
        out = fused_causal_lm_loss(model, ids[mine], labels[mine], reduction="sum", impl="torch")
        (out.loss / count).backward()
        total = out.loss.detach().clone()
        dist.all_reduce(total)
        grads = {n: p.grad.full_tensor() * WORLD for n, p in model.named_parameters()}  # FSDP averages over ranks
        if rank == 0:
            torch.save({"loss": total / count, "grads": grads}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("tied", [True])  # tied: the lm_head weight is the embedding, used twice in one unit
def test_fsdp2_matches_single_process(tmp_path, tied):
    path = str(tmp_path / "fsdp.pt")
    mp.start_processes(_worker, args=(_free_port(), tied, path), nprocs=WORLD, start_method="spawn", join=True)
    got = torch.load(path)
    ids, labels, _ = batch(seed=7, b=4)
    model = tiny_model(tied)
    loss = fused_causal_lm_loss(model, ids, labels, impl="torch").loss
    loss.backward()
    torch.testing.assert_close(got["loss"], loss, rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(got["grads"][name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
