"""``torchrun`` glue: env:// initialisation (NCCL on GPU, gloo on CPU), rank helpers.

Models are not wrapped in ``DistributedDataParallel``: the losses gather embeddings across
ranks with gradient and the harmonizer all-reduces the harmonized gradients itself
(docs/architecture.md).

Example:
    >>> ctx = setup("cpu")          # no torchrun environment: a single process
    >>> ctx.rank, ctx.world_size, ctx.is_main
    (0, 1, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    """Where this process sits: rank, world size and the device it computes on."""

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


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available")
    return torch.device(name)


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                init_method="env://")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def teardown() -> None:
    """Leave the process group if one was joined.

    All ranks meet at a barrier first: a rank that closes its gloo connections while a peer
    is still sending can abort the peer ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_sum(value: float, device: torch.device) -> float:
    """Sum a number over ranks (identity without a process group).

    Example:
        >>> all_sum(2.5, torch.device("cpu"))
        2.5
    """
    if not (dist.is_available() and dist.is_initialized()):
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())
