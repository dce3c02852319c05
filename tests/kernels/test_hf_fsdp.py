"""FSDP2 (2 gloo processes, CPU): a patched model sharded with fully_shard gives the single-process loss and grads;
an lm_head sharded on its own is refused."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from wdl.distributed import free_port
from tests.kernels.hf_common import batch, tiny_model
from wdl_kernels.hf import apply_fused_loss

WORLD = 2


def _worker(rank: int, port: int, out_path: str):
    from torch.distributed.fsdp import fully_shard

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ids, labels = batch(seed=7, b=4)
        count = int((labels[:, 1:] != -100).sum())
        mine = slice(rank * 2, rank * 2 + 2)
        results = {}
        for tied in (True, False):
            model = apply_fused_loss(tiny_model(tied), impl="torch")
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            # HF Trainer's convention: the global token count, times the world size (FSDP averages the gradients)
            loss = model(input_ids=ids[mine], labels=labels[mine], num_items_in_batch=count).loss
            (loss * WORLD).backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            results[tied] = (total, {n: p.grad.full_tensor() for n, p in model.named_parameters()})
        separate = apply_fused_loss(tiny_model(False), impl="torch")
        fully_shard(separate.lm_head)
        fully_shard(separate)
        try:
            separate(input_ids=ids[mine], labels=labels[mine])
            refused = ""
        except ValueError as e:
            refused = str(e)
        if rank == 0:
            torch.save({"results": results, "refused": refused}, out_path)
        # Both ranks done with every collective before teardown: a gloo group destroyed while the peer still
        # communicates can abort the process ("terminate called without an active exception").
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_fsdp2_matches_single_process(tmp_path):
    path = str(tmp_path / "fsdp.pt")
    mp.start_processes(_worker, args=(free_port(), path), nprocs=WORLD, start_method="spawn", join=True)
    got = torch.load(path)
    ids, labels = batch(seed=7, b=4)
    for tied in (True, False):
        model = tiny_model(tied)
        loss = model(input_ids=ids, labels=labels).loss  # the model's own loss, one process
        loss.backward()
        total, grads = got["results"][tied]
        torch.testing.assert_close(total, loss, rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"tied={tied} {name}")
    assert "sharded inside the forward" in got["refused"]
