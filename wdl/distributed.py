"""The process group and this rank's device, from the launcher's environment (torchrun, the DeepSpeed launcher).

    ctx = init_distributed()      # every entry point, once; joining again is a no-op
    ctx.rank, ctx.world_size, ctx.local_rank, ctx.device, ctx.is_main
    ...
    leave_distributed()           # before rank 0 goes on alone (evaluation)

Multi-node ready: RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT come from the launcher; NCCL on
CUDA, gloo on the CPU. A single process (no WORLD_SIZE, or 1) needs no process group at all. The collectives
below are identities without a group, so single-process code calls them unconditionally.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(*, require_group: bool = False) -> DistContext:
    """Join (or create) the default process group the launcher describes; pick this rank's device.

    `require_group`: create a one-process group even without a launcher (FSDP2 / DeepSpeed on one device).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if (world > 1 or require_group) and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # one process started without a launcher
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1",
                              LOCAL_RANK="0")
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def leave_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def process_group_backend() -> str:
    """The process group's communication backend ("nccl", "gloo"), "none" without a group."""
    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else "none"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a rendezvous of local processes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _in_group() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _in_group():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks; returns `t`."""
    if _in_group():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order."""
    if not _in_group():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (what the other ranks pass is ignored)."""
    if not _in_group():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
