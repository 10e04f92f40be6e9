"""Learning-rate schedule: linear warm-up, then cosine annealing down to a floor.

Example:
    >>> [round(warmup_cosine(s, lr=1.0, min_lr=0.5, warmup=2, total=6), 3) for s in range(7)]
    [0.5, 1.0, 1.0, 0.927, 0.75, 0.573, 0.5]
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Learning rate at optimizer step ``step`` (0-based).

    Warm-up rises linearly to ``lr`` over ``warmup`` steps (step s gets ``lr·(s+1)/warmup``);
    from then on a half cosine goes from ``lr`` at step ``warmup`` to ``min_lr`` at ``total``
    and stays there.

    Example:
        >>> warmup_cosine(0, lr=1e-4, min_lr=5e-5, warmup=0, total=10)
        0.0001
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - warmup)
    t = min(1.0, (step - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * t))


def make_scheduler(optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup: int,
                   total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`warmup_cosine` (the optimizer's lr must equal ``lr``).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.Adam([p], lr=2.0)
        >>> sched = make_scheduler(opt, lr=2.0, min_lr=1.0, warmup=4, total=8)
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, lr, min_lr, warmup, total) / lr)
