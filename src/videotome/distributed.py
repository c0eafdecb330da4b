"""One process or many under ``torchrun``: joining the process group, and moving small values between ranks.

Every command that runs under torchrun (evaluation, VTM training) sets up its processes here: gloo on CPUs, NCCL
on GPUs (one per process, chosen by ``LOCAL_RANK``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .measure import resolve_device


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single process.

    ``device`` as :func:`videotome.measure.resolve_device` reads it; under torchrun a CUDA device becomes this
    process's own GPU.
    """
    target = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistContext(0, 1, target)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = target.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), target)


def broadcast(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every rank."""
    if context.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, context: DistContext) -> list[Any]:
    """Every rank's ``value``, on rank 0 (other ranks get an empty list)."""
    if context.world == 1:
        return [value]
    boxes = [None] * context.world if context.is_main else None
    dist.gather_object(value, boxes, dst=0)
    return boxes or []


def barrier(context: DistContext) -> None:
    """Wait until every rank gets here."""
    if context.world > 1:
        dist.barrier()


def is_main_process() -> bool:
    """Whether this process is rank 0 of the process group it joined, or runs alone (for code without a context)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def finish_distributed() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()


def in_process_group(command: Callable[..., int]) -> Callable[..., int]:
    """Wrap a command so that it leaves the process group (under torchrun) however it ends."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> int:
        try:
            return command(*args, **kwargs)
        finally:
            finish_distributed()

    return wrapper
