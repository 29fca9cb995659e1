"""Data-parallel training in processes started by torchrun: the ranks, the process group, the collectives.

Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) everything here is a no-op, so the single-process path
runs exactly the code it always did.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

from vae.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among ``world`` data-parallel processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes logs, checkpoints, metrics and figures."""
        return self.rank == 0


SINGLE = Ranks()  # one process: no torchrun


def setup(device: torch.device, batch_size: int) -> tuple[Ranks, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, Gloo on the CPU); return the ranks and
    this process's device (cuda:<local rank> on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if batch_size < world:
        raise ConfigError(
            f"batch_size={batch_size} is invalid with {world} processes: each process takes a share of "
            f"every batch, so give batch_size >= {world}."
        )
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def teardown(ranks: Ranks) -> None:
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(tensor: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """Sum ``tensor`` over the ranks, in place."""
    if ranks.active:
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, ranks: Ranks, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (so that all ranks stop at the same step)."""
    if not ranks.active:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_main(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ranks.active:
        return [obj]
    out: list[Any] = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out
