"""Two-process DDP (gloo, CPU) under stock transformers.Trainer: the patched model logs the same losses and grad
norms and makes the same updates as the stock model (HF's num_items_in_batch x world-size scaling holds)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from wdl.distributed import free_port
from tests.kernels.hf_common import assert_same_run, collate, params, rows, tiny_model, train_logs, training_args

WORLD = 2


def _worker(rank: int, port: int, out_path: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    from transformers import Trainer

    from wdl_kernels.hf import apply_fused_loss

    results = {}
    for tied in (True, False):
        for name, model in (("stock", tiny_model(tied)), ("fused", apply_fused_loss(tiny_model(tied), impl="torch"))):
            args = training_args(ddp_backend="gloo", average_tokens_across_devices=True)
            trainer = Trainer(model=model, args=args, train_dataset=rows(), data_collator=collate)
            trainer.train()
            assert trainer.args.world_size == WORLD and trainer.model_accepts_loss_kwargs
            results[name, tied] = (train_logs(trainer), params(model))
    if rank == 0:
        torch.save(results, out_path)


@pytest.mark.distributed
def test_ddp_trainer_matches_stock(tmp_path):
    path = str(tmp_path / "ddp.pt")
    mp.start_processes(_worker, args=(free_port(), path), nprocs=WORLD, start_method="spawn", join=True)
    got = torch.load(path)
    for tied in (True, False):
        (stock_logs, stock_params), (logs, new_params) = got["stock", tied], got["fused", tied]
        assert_same_run(stock_logs, logs, stock_params, new_params, rtol=1e-5, atol=1e-6)
        # and the loss is not 1/world_size of a single process's: the first step's loss is a plain per-token mean
        assert 5.0 < stock_logs[0]["loss"] < 6.5
