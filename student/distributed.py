"""Process placement for training: one process, or one of several started by ``torchrun``.

:class:`DistributedContext` reads torchrun's environment (WORLD_SIZE, RANK,
LOCAL_RANK, LOCAL_WORLD_SIZE); the helpers here start and end the process group
(NCCL on CUDA, gloo on CPU), pick each process's device and divide a node's cores
among its processes.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from tdt.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Process placement under ``torchrun``; one process (rank 0 of 1) otherwise.

    The tests run the multi-process path as two CPU processes (gloo); on GPUs
    it is the same standard torch recipe (process group, DDP wrapper, sharded
    draws, rank 0 writes) with NCCL.
    """

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_environment(cls) -> DistributedContext:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        return cls(
            world_size=world_size,
            rank=int(os.environ["RANK"]),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_process_group(context: DistributedContext) -> None:
    """Join torchrun's process group (once) when there are several processes."""
    if context.is_distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def end_process_group(context: DistributedContext) -> None:
    """Wait for every process, then leave the group (a no-op for a single process)."""
    if context.is_distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_device(requested: str, context: DistributedContext) -> torch.device:
    """``auto`` -> CUDA when available; under torchrun each process takes its local GPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ConfigError(f"device {requested!r}: {error}") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {requested!r} requested but CUDA is not available")
        if context.is_distributed:
            device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    return device


def threads_per_process(requested: int, context: DistributedContext) -> int:
    """``requested`` torch threads, or (0) this node's cores divided among its processes."""
    return requested or max(1, (os.cpu_count() or 1) // context.local_world_size)


__all__ = [
    "DistributedContext",
    "end_process_group",
    "resolve_device",
    "start_process_group",
    "threads_per_process",
]
