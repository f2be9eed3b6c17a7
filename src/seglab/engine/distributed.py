"""torchrun support: the process group from the environment, rank queries, reductions and evaluation shards.

``torchrun`` (and SLURM through it) sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; ``setup`` joins the group (NCCL on CUDA, gloo on CPU). Every helper here also works in a
plain single process, where it is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun; returns this process's device (``cuda:LOCAL_RANK``).

    The group's keys live under a prefix of torchrun's restart count: after ``--max-restarts`` brings a group
    back, the store it shares with the failed attempt still holds that attempt's addresses, and a process
    reading one of them would wait on a dead peer."""
    if not launched_by_torchrun() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    store, rank, world = next(dist.rendezvous("env://"))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.PrefixStore(f"seglab/{attempt}", store),
                            rank=rank, world_size=world)
    return device


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def restarted() -> bool:
    """True in a group that torchrun restarted after a failure (``--max-restarts``): it should resume."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over the ranks (a new tensor on the values' device; NCCL reduces on the GPU)."""
    if not active():
        return values
    reduced = values.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def shard_indices(length: int) -> range:
    """This rank's items ``rank, rank + world, …`` of ``length``: every item on exactly one rank, none
    repeated (``DistributedSampler`` pads by repeating items, which would count them twice in a metric)."""
    return range(rank(), length, world_size())


def gather_to_main(items: list) -> list | None:
    """All ranks' lists concatenated in rank order on rank 0 (None elsewhere); picklable items."""
    if not active():
        return items
    gathered = [None] * world_size() if is_main() else None
    dist.gather_object(items, gathered, dst=0)
    return [item for part in gathered for item in part] if is_main() else None


def broadcast_from_main(value):
    """Rank 0's ``value`` on every rank (picklable)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
