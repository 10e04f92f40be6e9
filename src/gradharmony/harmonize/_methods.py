"""Harmonization methods as functions of the per-group Gramian ``[G, L, L]`` -> weights ``[G, L]``.

Every method returns loss weights ``w`` so that the harmonized update of group ``g`` is
``sum_l w[g, l] * g_l`` (a weighted backward). Working on the Gramian alone makes each method
exact and cheap: a gradient rewritten as ``sum_k c_k g_k`` has inner products ``c^T K c``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradharmony._dist import multi_rank

from ._functional import gram_cosine

METHODS = ("baseline", "rw-va", "rw-vt", "gr", "gradvac", "cl", "both", "small-loss")
#: the methods that drop groups under the gamma schedule
DROPPING_METHODS = ("cl", "both", "small-loss")


def _check_gram(gram: Tensor) -> Tensor:
    if gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must have shape [G, L, L], got {tuple(gram.shape)}")
    return gram.double()


def _random_orders(groups: int, losses: int, generator: torch.Generator | None) -> Tensor:
    """For every group and every loss i, a random order of the other losses: ``[G, L, L-1]``."""
    keys = torch.rand(groups, losses, losses, generator=generator, dtype=torch.float64)
    eye = torch.eye(losses, dtype=torch.bool).expand(groups, losses, losses)
    keys = keys.masked_fill(eye, 2.0)  # the loss itself sorts last and is cut off
    return keys.argsort(dim=-1)[..., : losses - 1]


def _dist_sum(*tensors: Tensor) -> tuple[Tensor, ...]:
    """SUM over ranks under torch.distributed (identity otherwise), so every rank's GradVac
    target moves by the statistics of the global batch."""
    import torch.distributed as dist

    if not multi_rank():
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tuple(out)


def _sequential_surgery(k: Tensor, generator: torch.Generator | None, adjust) -> Tensor:
    """The PCGrad/GradVac scheme in weight space: summed coefficients ``[G, L]``.

    For every loss i a copy ``g_i' = sum_m c_m g_m`` starts at ``g_i``; for every other loss
    j in a random order (per group), ``c_j += adjust(i, j, rows, c, <g_i', g_j>)``.
    """
    groups, losses, _ = k.shape
    orders = _random_orders(groups, losses, generator)
    rows = torch.arange(groups)
    total = torch.zeros(groups, losses, dtype=torch.float64)
    for i in range(losses):
        c = torch.zeros(groups, losses, dtype=torch.float64)
        c[:, i] = 1.0
        for s in range(losses - 1):
            j = orders[:, i, s]
            dot = (c * k[rows, :, j]).sum(-1)
            c[rows, j] += adjust(i, j, rows, c, dot)
        total += c
    return total


def gr_weights(gram: Tensor) -> Tensor:
    """GR closed form for two losses (Algorithm 1 with the original other gradient).

    With ``n = min(0, <g_0, g_1>)``: ``w_0 = 1 - n / |g_0|^2``, ``w_1 = 1 - n / |g_1|^2``
    (``g_0' = g_0 - n / |g_1|^2 g_1`` and ``g_1' = g_1 - n / |g_0|^2 g_0`` sum to that).

    Example:
        >>> gr_weights(torch.tensor([[[1.0, -1.0], [-1.0, 2.0]]]))
        tensor([[2.0000, 1.5000]])
    """
    k = _check_gram(gram)
    if k.shape[1] != 2:
        raise ValueError(f"gr_weights needs exactly 2 losses, got {k.shape[1]}")
    n = k[:, 0, 1].clamp_max(0.0)
    sq0, sq1 = k[:, 0, 0], k[:, 1, 1]
    w0 = 1 - torch.where(sq0 > 0, n / sq0.clamp_min(1e-300), 0.0)
    w1 = 1 - torch.where(sq1 > 0, n / sq1.clamp_min(1e-300), 0.0)
    return torch.stack([w0, w1], dim=1).to(gram.dtype)


def pcgrad_weights(gram: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """PCGrad (Yu et al. 2020) in weight space; equals :func:`gr_weights` for two losses.

    For every loss i (per group), a copy ``g_i'`` starts at ``g_i`` and, for every other loss j
    in a random order, is projected onto the normal plane of the original ``g_j`` when
    ``<g_i', g_j> < 0``. The update is ``sum_i g_i'``. Orders are drawn per group from
    ``generator`` (seed it for reproducibility).

    Example:
        >>> k = torch.tensor([[[1.0, -0.5, 0.0], [-0.5, 1.0, 0.0], [0.0, 0.0, 1.0]]])
        >>> pcgrad_weights(k)
        tensor([[1.5000, 1.5000, 1.0000]])
    """
    k = _check_gram(gram)
    groups, losses, _ = k.shape
    if losses == 1:
        return torch.ones(groups, 1, dtype=gram.dtype)
    sq = k.diagonal(dim1=1, dim2=2)

    def project(i, j, rows, c, dot):
        sq_j = sq[rows, j]
        return -torch.where((dot < 0) & (sq_j > 0), dot / sq_j.clamp_min(1e-300), 0.0)

    total = _sequential_surgery(k, generator, project)
    return total.to(gram.dtype)


def reweight_weights(names: list[str], method: str, strong: float = 2.5, weak: float = 0.5):
    """RW baselines: ``rw-va`` scales the ``va`` loss by 2.5 and every other loss by 0.5.

    ``rw-vt`` is the reverse (``vt`` x 2.5, the others x 0.5). Returns weights ``[L]``.

    Example:
        >>> reweight_weights(["va", "vt"], "rw-va")
        tensor([2.5000, 0.5000])
    """
    if method not in ("rw-va", "rw-vt"):
        raise ValueError(f"reweight_weights: method must be 'rw-va' or 'rw-vt', got {method!r}")
    key = method[3:]
    if key not in names:
        raise ValueError(f"method {method!r} needs a loss named {key!r}; losses are {names}")
    return torch.tensor([strong if n == key else weak for n in names])


def both_rule(cos: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """The Both rule: drop when ``cos <= gamma``, project when ``gamma < cos < 0``, else keep.

    Returns ``(kept, projected)`` boolean tensors shaped like ``cos``. CL alone uses ``kept``.

    Example:
        >>> both_rule(torch.tensor([-0.5, -0.1, 0.2]), gamma=-0.3)
        (tensor([False,  True,  True]), tensor([False,  True, False]))
    """
    kept = cos > gamma
    return kept, kept & (cos < 0)


def small_loss_rule(cos: Tensor, gamma: float, scores: Tensor) -> Tensor:
    """The small-loss control of CL: drop as many groups as CL would (``cos <= gamma``), but
    the ones with the highest ``scores`` (their losses) instead of the lowest cosines.

    Returns ``kept`` shaped like ``cos``. Ties keep the earlier group. The count is CL's, so
    the two differ only in *which* groups go: the gradient signal against the loss signal.

    Example:
        >>> small_loss_rule(torch.tensor([-0.5, 0.1, 0.2]), -0.3, torch.tensor([1.0, 3.0, 2.0]))
        tensor([ True, False,  True])
    """
    if scores.shape != cos.shape:
        raise ValueError(f"scores must have the shape of the groups {tuple(cos.shape)}, got "
                         f"{tuple(scores.shape)}")
    drop = int((cos <= gamma).sum())
    kept = torch.ones_like(cos, dtype=torch.bool)
    if drop:
        order = torch.sort(scores.double(), descending=True, stable=True).indices
        kept[order[:drop]] = False
    return kept


class GammaSchedule:
    """Curriculum threshold rising linearly from ``gamma0`` to ``gamma_end`` over ``total_steps``.

    After ``total_steps`` it stays at ``gamma_end``. A constant threshold is
    ``GammaSchedule(g, g)`` (``total_steps`` is then not needed).

    Example:
        >>> sched = GammaSchedule(-0.3, 0.0, total_steps=100)
        >>> sched(0), sched(50), sched(1000)
        (-0.3, -0.15, 0.0)
    """

    def __init__(
        self, gamma0: float = -0.3, gamma_end: float = 0.0, total_steps: int | None = None
    ):
        if not (math.isfinite(gamma0) and math.isfinite(gamma_end)):
            raise ValueError(f"gamma values must be finite, got ({gamma0}, {gamma_end})")
        if gamma0 != gamma_end and (total_steps is None or total_steps <= 0):
            raise ValueError(
                f"a gamma schedule from {gamma0} to {gamma_end} needs total_steps > 0, "
                f"got {total_steps}"
            )
        self.gamma0, self.gamma_end, self.total_steps = float(gamma0), float(gamma_end), total_steps

    def __call__(self, step: int) -> float:
        if self.gamma0 == self.gamma_end:
            return self.gamma0
        frac = min(max(step, 0) / self.total_steps, 1.0)
        return round(self.gamma0 + (self.gamma_end - self.gamma0) * frac, 12)


class GradVac:
    """Gradient Vaccine (Wang et al. 2020) on the whole model, in weight space.

    Keeps an EMA target cosine ``phi_hat[i, j]`` per pair of losses (initialised to 0). For each
    loss i and each other loss j (random order), when ``phi = cos(g_i', g_j) < phi_hat`` the
    copy ``g_i'`` is moved towards ``g_j`` so that its cosine becomes ``phi_hat``:
    ``g_i' += |g_i'| (phi_hat sqrt(1-phi^2) - phi sqrt(1-phi_hat^2))
    / (|g_j| sqrt(1-phi_hat^2)) g_j``.
    Then ``phi_hat <- (1 - beta) phi_hat + beta phi`` with the original pairwise cosine.
    ``beta`` defaults to 0.01 as in the GradVac paper; some libraries use 0.5.

    At group/sample granularity all groups of a step share one target (read before the step);
    the EMA is then updated with the mean cosine over the groups that both losses reach (over
    all ranks under torch.distributed, so every rank keeps the same target).

    Example:
        >>> vac = GradVac(beta=0.5)
        >>> w = vac.weights(torch.tensor([[[1.0, -0.5], [-0.5, 1.0]]]))
        >>> w.round(decimals=4), float(vac.target[0, 1])
        (tensor([[1.5000, 1.5000]]), -0.25)
    """

    def __init__(self, beta: float = 0.01, generator: torch.Generator | None = None):
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"GradVac beta must be in (0, 1], got {beta}")
        self.beta = beta
        self.generator = generator
        self.target: Tensor | None = None

    def weights(self, gram: Tensor) -> Tensor:
        """Loss weights ``[G, L]`` for a Gramian ``[G, L, L]``; updates the EMA target."""
        k = _check_gram(gram)
        groups, losses, _ = k.shape
        if self.target is None or self.target.shape[0] != losses:
            self.target = torch.zeros(losses, losses, dtype=torch.float64)
        target = self.target
        sq = k.diagonal(dim1=1, dim2=2)

        def vaccinate(i, j, rows, c, dot):
            norm_c = torch.einsum("gl,glm,gm->g", c, k, c).clamp_min(0.0).sqrt()
            norm_j = sq[rows, j].clamp_min(0.0).sqrt()
            ok = (norm_c > 0) & (norm_j > 0)
            phi = torch.where(ok, dot / (norm_c * norm_j).clamp_min(1e-300), 0.0)
            phi = phi.clamp(-1.0, 1.0)
            phi_hat = target[i, j]
            move = ok & (phi < phi_hat)
            root_hat = (1 - phi_hat**2).clamp_min(1e-12).sqrt()
            coef = norm_c * (phi_hat * (1 - phi**2).sqrt() - phi * root_hat)
            coef = coef / (norm_j.clamp_min(1e-300) * root_hat)
            return torch.where(move, coef, 0.0)

        total = _sequential_surgery(k, self.generator, vaccinate)
        cos = gram_cosine(k)
        reach = (sq > 0).unsqueeze(2) & (sq > 0).unsqueeze(1)
        count, total_cos = _dist_sum(reach.sum(0).double(), (cos * reach).sum(0))
        mean = torch.where(count > 0, total_cos / count.clamp_min(1), target)
        self.target = torch.where(count > 0, (1 - self.beta) * target + self.beta * mean, target)
        return total.to(gram.dtype)

    def state_dict(self) -> dict:
        """The EMA target (and beta), for checkpoints."""
        return {"beta": self.beta, "target": None if self.target is None else self.target.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state written by :meth:`state_dict`."""
        self.beta = float(state["beta"])
        target = state["target"]
        self.target = None if target is None else torch.as_tensor(target, dtype=torch.float64)
