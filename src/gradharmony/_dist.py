"""The one test for "running under torch.distributed with more than one rank"."""

from __future__ import annotations


def multi_rank() -> bool:
    """True when torch.distributed is initialised with a world size above 1.

    Example:
        >>> multi_rank()
        False
    """
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
