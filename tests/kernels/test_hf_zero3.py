"""DeepSpeed ZeRO-3 (2 gloo processes, CPU): a patched model (and a MixedCausalLM), partitioned by
deepspeed.initialize after patching, gives the single-process loss and gradients (the lm_head weights the kernel
reads are gathered for it)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from wdl.distributed import free_port
from tests.kernels.hf_common import batch, tiny_model

WORLD = 2


def _worker(rank: int, port: int, out_path: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), DS_ACCELERATOR="cpu")
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from wdl_kernels.hf import MixedCausalLM, apply_fused_loss

    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)
    ids, labels = batch(seed=7, b=4)
    count = int((labels[:, 1:] != -100).sum())
    mine = slice(rank * 2, rank * 2 + 2)
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
              "zero_allow_untested_optimizer": True, "steps_per_print": 2**31 - 1}
    results = {}
    for tied in (True, False, "mixed"):
        if tied == "mixed":  # a tied strong and an untied weak model, both partitioned and trained
            model = MixedCausalLM(tiny_model(True), tiny_model(False, seed=1), lam=0.3, impl="torch")
        else:
            model = apply_fused_loss(tiny_model(tied), impl="torch")
        names = [n for n, _ in model.named_parameters()]
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                                          config=config, dist_init_required=False)
        heads = [model.get_output_embeddings().weight] + ([model.weak.lm_head.weight] if tied == "mixed" else [])
        assert all(h.ds_tensor.numel() < h.ds_numel for h in heads)  # partitioned: a shard lives on this rank
        loss = engine(input_ids=ids[mine], labels=labels[mine], num_items_in_batch=count).loss
        engine.backward(loss * WORLD, scale_wrt_gas=False)  # ZeRO averages over ranks, as DDP does
        total = loss.detach().clone()
        torch.distributed.all_reduce(total)
        params = dict(model.named_parameters())
        results[tied] = (total, {n: safe_get_full_grad(params[n]).clone() for n in names if n in params})
    if rank == 0:
        torch.save(results, out_path)


@pytest.mark.distributed
def test_zero3_matches_single_process(tmp_path):
    pytest.importorskip("deepspeed")  # the deepspeed extra
    path = str(tmp_path / "zero3.pt")
    mp.start_processes(_worker, args=(free_port(), path), nprocs=WORLD, start_method="spawn", join=True)
    got = torch.load(path)
    ids, labels = batch(seed=7, b=4)
    for tied in (True, False, "mixed"):
        if tied == "mixed":
            from wdl_kernels.hf import MixedCausalLM

            model = MixedCausalLM(tiny_model(True), tiny_model(False, seed=1), lam=0.3, impl="torch")
        else:
            model = tiny_model(tied)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        total, grads = got[tied]
        torch.testing.assert_close(total, loss, rtol=1e-5, atol=1e-6)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=f"tied={tied} {name}")
