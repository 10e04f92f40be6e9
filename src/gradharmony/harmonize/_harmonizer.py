"""The Harmonizer: per-group gradient conflicts and harmonized updates for any layered model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from ._backward import OutputGradients
from ._functional import gram_cosine
from ._layers import SUPPORTED, Call, ModuleWork, batchnorm_stats, check_module, kind_of
from ._methods import (
    METHODS,
    GammaSchedule,
    GradVac,
    both_rule,
    gr_weights,
    pcgrad_weights,
    reweight_weights,
)


@dataclass
class HarmonizeStats:
    """What one :meth:`Harmonizer.backward` did, per group (G = 1 for ``batch``, B for ``sample``).

    ``cos``: cosine between the two losses' group gradients (L > 2: the most negative pairwise
    cosine); 0 when a loss does not reach the group. ``kept``: group contributes to the update.
    ``projected``: its gradients were rewritten (GR/PCGrad projection, GradVac move).
    ``norms``: per-loss gradient norms ``[G]``. ``weights``: loss weights ``[G, L]`` of the
    update. ``gram``: the Gramians ``[G, L, L]``. ``all_dropped``: no group kept; the gradients
    are zero and the caller must skip ``optimizer.step()``.
    """

    cos: Tensor
    kept: Tensor
    projected: Tensor
    gamma: float
    norms: dict[str, Tensor]
    weights: Tensor
    gram: Tensor
    all_dropped: bool
    names: list[str] = field(default_factory=list)

    @property
    def kept_fraction(self) -> float:
        """Fraction of groups kept."""
        return float(self.kept.float().mean()) if self.kept.numel() else 1.0


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def _all_reduce_tensors(tensors: list[Tensor]) -> list[Tensor]:
    """SUM-all-reduce a list of tensors in one flat buffer (identity without torch.distributed)."""
    dist = _dist()
    if dist is None or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t).to(t.dtype))
        start += t.numel()
    return out


class Harmonizer:
    """Cross-modality gradient harmonization for any model built from supported layers.

    Forward hooks on every ``nn.Linear``, ``nn.Conv1d/2d/3d`` (groups=1), ``nn.LayerNorm``,
    ``nn.Embedding`` and BatchNorm (layer-by-layer definition) record each call while grad is
    enabled. :meth:`backward` asks autograd once per loss for the gradient at the recorded
    outputs (no weight-gradient work), builds each group's Gramian layer by layer (cross-pass
    terms included: one triplet's video, audio and text passes all touch the shared weights),
    turns it into loss weights with the chosen method and writes
    ``sum_groups sum_l w_gl G_g^l`` into ``p.grad`` from the stored tensors (no third backward).

    Args:
        model: the module whose trainable parameters receive the update. A trainable parameter
            owned by an unsupported module (``nn.MultiheadAttention.in_proj_weight``, a bare
            ``nn.Parameter``) or shared by two modules is rejected with ``ValueError``.
        method: ``baseline | rw-va | rw-vt | gr | gradvac | cl | both``. ``gr`` is Algorithm 1
            for two losses and PCGrad (random pairwise order, seeded) for more. ``cl`` drops a
            group when ``cos <= gamma``; ``both`` also projects when ``gamma < cos < 0``.
        granularity: ``"batch"`` (one group: the paper's Algorithm 1 on the whole batch, under
            torch.distributed the global batch), ``"sample"`` (one group per triplet) or an
            int m (groups of m triplets; m must divide the batch).
        gamma: ``(gamma0, gamma_end)`` rising linearly over ``total_steps``, or a float.
        measure: for ``baseline``, still compute the Gramian (cosines for conflict plots).
        beta: GradVac EMA rate (default 0.01 as in the GradVac paper; some libraries use 0.5).
        strategy: ``auto | ghost | materialize``, how Linear/Conv weights enter the Gramian.
        keep_bytes: extra memory allowed for keeping materialised per-group weight gradients
            from the Gramian to the update. A module's are kept when that (net of the recorded
            inputs and output gradients it lets go) stays within the allowance, so the default
            0 keeps them only where it saves memory; elsewhere the update is recomputed as
            ``A^T (sum_l w_l Delta^l)``. Negative: never keep.
        seed: seeds the random pairwise orders of PCGrad/GradVac.

    A group a loss does not reach (e.g. a clip without narration) is kept with weights 1 and
    ``cos = 0``: there is nothing to conflict with. Records are cleared by :meth:`backward`
    and :meth:`reset`; forwards under ``torch.no_grad()`` record nothing. Non-reentrant
    activation checkpointing works (recomputations are ignored); reentrant checkpointing is
    detected and raises. Accumulates into ``p.grad`` like ``loss.backward()``.

    Example:
        >>> model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
        >>> harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.3)
        >>> out = model(torch.randn(8, 3))
        >>> stats = harm.backward({"va": out[:, 0].pow(2).mean(), "vt": out[:, 1].mean()})
        >>> stats.cos.shape, stats.kept.dtype, model[0].weight.grad.shape
        (torch.Size([8]), torch.bool, torch.Size([4, 3]))
    """

    def __init__(
        self,
        model: nn.Module,
        method: str = "both",
        granularity: str | int = "sample",
        gamma: float | tuple[float, float] = (-0.3, 0.0),
        total_steps: int | None = None,
        measure: bool = True,
        beta: float = 0.01,
        strategy: str = "auto",
        keep_bytes: int = 0,
        seed: int = 0,
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        self.method = method
        self.group_size = self._parse_granularity(granularity)
        self.granularity = granularity
        if strategy not in ("auto", "ghost", "materialize"):
            raise ValueError(f"strategy must be auto|ghost|materialize, got {strategy!r}")
        self.strategy, self.keep_bytes, self.measure = strategy, keep_bytes, measure
        g0, g1 = (gamma, gamma) if isinstance(gamma, int | float) else tuple(gamma)
        if method not in ("cl", "both") and total_steps is None:
            g1 = g0  # gamma is only reported; no schedule needed
        self.schedule = GammaSchedule(g0, g1, total_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.gradvac = GradVac(beta, generator=self.generator)
        self.model = model
        self.params = self._check_model(model)
        self._records: list[Call] = []
        self._in_backward = False
        self._reentrant = False
        self._handles = [
            m.register_forward_hook(self._hook)
            for m in model.modules()
            if isinstance(m, SUPPORTED)
            and any(p.requires_grad for p in m.parameters(recurse=False))
        ]

    @staticmethod
    def _parse_granularity(granularity) -> int | None:
        if granularity == "batch":
            return None
        if granularity == "sample":
            return 1
        if isinstance(granularity, int) and not isinstance(granularity, bool) and granularity > 0:
            return granularity
        raise ValueError(
            f"granularity must be 'batch', 'sample' or a positive int group size, "
            f"got {granularity!r}"
        )

    @staticmethod
    def _check_model(model: nn.Module) -> list[nn.Parameter]:
        owner: dict[int, str] = {}
        params = []
        for mod_name, module in model.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                full = f"{mod_name}.{p_name}" if mod_name else p_name
                if kind_of(module) is None:
                    raise ValueError(
                        f"parameter {full!r} is owned by {type(module).__name__}, which the "
                        "Harmonizer does not support (supported: Linear, Conv1d/2d/3d, "
                        "LayerNorm, Embedding, BatchNorm); build it from supported layers"
                    )
                check_module(mod_name, module)
                if id(p) in owner:
                    raise ValueError(
                        f"parameter {full!r} is shared with {owner[id(p)]!r}; tied parameters "
                        "are not supported"
                    )
                owner[id(p)] = full
                params.append(p)
        if not params:
            raise ValueError("model has no trainable parameters")
        return params

    def _hook(self, module: nn.Module, args: tuple, output) -> None:
        if self._in_backward:
            return
        inp = args[0] if args else None
        if not torch.is_grad_enabled():
            if isinstance(inp, Tensor) and inp.requires_grad:
                self._reentrant = True
            return
        if not isinstance(output, Tensor) or not output.requires_grad:
            return
        kind = kind_of(module)
        expected = {
            "linear": 2,
            "conv": module.weight.dim(),
            "embedding": 1,
            "batchnorm": 2,
            "layernorm": len(getattr(module, "normalized_shape", ())) + 1,
        }[kind]
        if not isinstance(inp, Tensor) or inp.dim() < expected:
            raise RuntimeError(
                f"{type(module).__name__} was called on an input of shape "
                f"{None if inp is None else tuple(inp.shape)}; the Harmonizer needs a batch "
                "dimension (triplet on dim 0)"
            )
        if output.grad_fn is None:
            return  # a leaf: no layer computation to differentiate through
        stats = batchnorm_stats(module, inp) if kind == "batchnorm" else None
        self._records.append(Call(module, inp.detach(), get_gradient_edge(output), stats))

    def reset(self) -> None:
        """Forget the recorded forward calls."""
        self._records = []
        self._reentrant = False

    def remove(self) -> None:
        """Remove the forward hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self.reset()

    def state_dict(self) -> dict:
        """State to checkpoint (the GradVac EMA target and the random generator)."""
        return {"gradvac": self.gradvac.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state written by :meth:`state_dict`."""
        self.gradvac.load_state_dict(state["gradvac"])
        self.generator.set_state(state["generator"])

    # -- backward -------------------------------------------------------------------------

    def backward(
        self, losses: dict[str, Tensor], step: int = 0, batch_size: int | None = None
    ) -> HarmonizeStats:
        """Write the harmonized update into ``p.grad`` and return per-group statistics.

        ``losses`` maps names to scalar losses (``{"va": ..., "vt": ...}``; the ``rw-*``
        methods look the names up). ``step`` drives the gamma schedule. ``batch_size`` is the
        number of triplets B (default: the smallest row count among the recorded calls); a
        call whose row count is not a multiple of B raises. Run one forward of the batch per
        backward: every recorded call maps its row r to triplet ``r // (rows / B)``.
        On any error ``p.grad`` is left untouched. When ``stats.all_dropped`` is True the
        gradients are zero: skip ``optimizer.step()`` so Adam moments do not move.
        """
        try:
            names, tensors = self._validate(losses)
            self._in_backward = True
            if self.method == "baseline" and not self.measure:
                return self._plain(names, tensors, step)
            if self.group_size is None:
                return self._batch(names, tensors, step)
            return self._grouped(names, tensors, step, batch_size)
        finally:
            self._in_backward = False
            self.reset()

    def _validate(self, losses) -> tuple[list[str], list[Tensor]]:
        if not isinstance(losses, dict) or not losses:
            raise ValueError("losses must be a non-empty dict name -> scalar tensor")
        if self.method != "baseline" and len(losses) < 2:
            raise ValueError(f"method {self.method!r} needs at least 2 losses, got {len(losses)}")
        for name, loss in losses.items():
            if not isinstance(loss, Tensor) or loss.numel() != 1 or loss.dim() > 1:
                shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
                raise ValueError(f"loss {name!r} must be a scalar tensor, got {shape}")
            if not torch.isfinite(loss.detach()).all():
                raise ValueError(f"loss {name!r} is not finite: {float(loss.detach())}")
            if not loss.requires_grad:
                raise RuntimeError(f"loss {name!r} does not require grad (no graph to the model)")
        if self._reentrant:
            raise RuntimeError(
                "a supported module ran under no_grad on an input that requires grad: reentrant "
                "activation checkpointing is not supported; use "
                "torch.utils.checkpoint.checkpoint(..., use_reentrant=False)"
            )
        return list(losses), [losses[n].reshape(()) for n in losses]

    def _plain(self, names, tensors, step) -> HarmonizeStats:
        grads = torch.autograd.grad(sum(tensors), self.params, allow_unused=True)
        if all(g is None for g in grads):
            raise RuntimeError("the losses do not depend on the model's parameters")
        new = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        self._write(new)
        empty = torch.zeros(0)
        L = len(names)
        return HarmonizeStats(
            empty, torch.ones(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool),
            self.schedule(step), {n: empty for n in names}, torch.ones(0, L),
            torch.zeros(0, L, L), False, names,
        )  # fmt: skip

    def _batch(self, names, tensors, step) -> HarmonizeStats:
        per_loss = []
        for l, (name, loss) in enumerate(zip(names, tensors)):
            grads = torch.autograd.grad(
                loss, self.params, retain_graph=l < len(tensors) - 1, allow_unused=True
            )
            if all(g is None for g in grads):
                raise RuntimeError(f"loss {name!r} does not depend on the model's parameters")
            zeros = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
            per_loss.append(zeros)
        with torch.no_grad():
            return self._batch_update(names, per_loss, step)

    def _batch_update(self, names, per_loss, step) -> HarmonizeStats:
        L = len(names)
        flat = _all_reduce_tensors([g for grads in per_loss for g in grads])
        per_loss = [flat[l * len(self.params) : (l + 1) * len(self.params)] for l in range(L)]
        gram = torch.zeros(1, L, L, dtype=torch.float64)
        for a in range(L):
            for b in range(a, L):
                pairs = zip(per_loss[a], per_loss[b])
                v = sum(float((ga.double() * gb.double()).sum()) for ga, gb in pairs)
                gram[0, a, b] = gram[0, b, a] = v
        weights, stats = self._decide(names, gram, step)
        new = [
            sum(float(weights[0, l]) * per_loss[l][i] for l in range(L))
            for i in range(len(self.params))
        ]
        self._write(new)
        return stats

    def _grouped(self, names, tensors, step, batch_size) -> HarmonizeStats:
        records = self._records
        if not records:
            raise RuntimeError(
                "no forward pass was recorded since the last backward: run the model with grad "
                "enabled after creating the Harmonizer"
            )
        grads = OutputGradients(tensors, [c.edge for c in records])
        self._check_broadcast(records, grads.broadcast)
        B = batch_size or min(c.rows for c in records)
        for c in records:
            if c.rows % B:
                raise ValueError(
                    f"{type(c.module).__name__} was called with {c.rows} rows, not a multiple "
                    f"of the batch size {B}; pass batch_size= or keep the triplet on dim 0"
                )
        if B % self.group_size:
            raise ValueError(
                f"granularity {self.group_size} does not divide the batch size {B}"
            )
        G = B // self.group_size
        L = len(names)
        by_module: dict[nn.Module, list[Call]] = {}
        for c in records:
            by_module.setdefault(c.module, []).append(c)
        budget = [self.keep_bytes]
        works = [
            ModuleWork(m, calls, G, L, self.strategy, budget) for m, calls in by_module.items()
        ]
        self._records = []
        self._collect_output_gradients(names, grads, records, works)
        del records
        with torch.no_grad():
            return self._grouped_update(names, [w for w in works if w.reached], G, L, step)

    def _check_broadcast(self, records: list[Call], broadcast: dict) -> None:
        if not broadcast:
            return
        names = {m: n for n, m in self.model.named_modules()}
        i, (op, shape, result) = next(iter(sorted(broadcast.items())))
        module = records[i].module
        raise ValueError(
            f"the output of {type(module).__name__} {names.get(module, '?')!r} (shape "
            f"{list(shape)}) is broadcast to {list(result)} by {op}: its gradient arrives "
            "summed over the triplets and cannot be split per triplet. Give the call the batch "
            "dimension, e.g. look a positional table up with torch.arange(T).expand(B, T)"
        )

    def _collect_output_gradients(self, names, grads, records, works) -> None:
        """Hand every loss's gradient at every recorded output to its module, as it arrives.

        A call of a norm layer or embedding keeps no output gradient (its module folds each
        into per-group sums), and its input is dropped once every loss reaching it delivered.
        """
        slot = {}
        for work in works:
            for i, call in enumerate(work.calls):
                slot[id(call)] = (work, i)
        waiting = [len(r) for r in grads.reached]
        reached = [False] * len(names)
        with torch.no_grad():
            for l, indices, values in grads:
                for k, g in zip(indices, values):
                    if g is None:
                        continue
                    reached[l] = True
                    work, i = slot[id(records[k])]
                    work.absorb(i, l, g)
                    waiting[k] -= 1
                    if waiting[k] == 0 and work.reduces_on_arrival:
                        records[k].inp = None
        for c in records:
            c.edge = None
        for name, ok in zip(names, reached):
            if not ok:
                raise RuntimeError(f"loss {name!r} does not depend on the model's parameters")

    def _grouped_update(self, names, works, G, L, step) -> HarmonizeStats:
        gram = torch.zeros(G, L, L, dtype=torch.float64, device=works[0].device)
        for work in works:
            gram += work.gram()
            if not work.recompute_weight:
                work.release()
        weights, stats = self._decide(names, gram.cpu(), step)
        updates: dict[int, Tensor] = {}
        for work in works:
            for pname, g in work.update(weights).items():
                p = getattr(work.module, pname)
                if p.requires_grad:
                    updates[id(p)] = g
        new = [updates.get(id(p), torch.zeros_like(p)) for p in self.params]
        self._write(_all_reduce_tensors(new))
        return stats

    def _decide(self, names, gram: Tensor, step: int) -> tuple[Tensor, HarmonizeStats]:
        G, L, _ = gram.shape
        diag = gram.diagonal(dim1=1, dim2=2)
        for l, name in enumerate(names):
            if not bool((diag[:, l] > 0).any()):
                raise RuntimeError(f"loss {name!r} has a zero gradient for every group")
        if not bool(torch.isfinite(gram).all()):
            raise RuntimeError("non-finite gradients: the Gramian contains inf/nan")
        gamma = self.schedule(step)
        cos_m = gram_cosine(gram)
        pair = (diag > 0).unsqueeze(2) & (diag > 0).unsqueeze(1)
        pair &= ~torch.eye(L, dtype=torch.bool)
        conflict = torch.where(pair, cos_m, math.inf).flatten(1).min(1).values
        has_pair = pair.flatten(1).any(1)
        cos = torch.where(has_pair, conflict, 0.0)
        decide_cos = torch.where(has_pair, conflict, 1.0)
        ones = torch.ones(G, L, dtype=torch.float64)
        kept = torch.ones(G, dtype=torch.bool)
        projected = torch.zeros(G, dtype=torch.bool)
        m = self.method
        if m == "baseline":
            weights = ones
        elif m in ("rw-va", "rw-vt"):
            weights = ones * reweight_weights(names, m).double()
        elif m == "gr":
            weights = self._project(gram)
            projected = decide_cos < 0
        elif m == "gradvac":
            target = self.gradvac.target
            weights = self.gradvac.weights(gram)
            if target is None:
                target = torch.zeros(L, L, dtype=torch.float64)
            below = (cos_m < target) & pair
            projected = below.flatten(1).any(1)
        else:
            kept, projected = both_rule(decide_cos, gamma)
            if m == "cl":
                projected = torch.zeros_like(kept)
                weights = ones.clone()
            else:
                weights = torch.where(projected.unsqueeze(1), self._project(gram), ones)
            weights = weights * kept.unsqueeze(1)
        stats = HarmonizeStats(
            cos=cos.float(),
            kept=kept,
            projected=projected,
            gamma=gamma,
            norms={n: diag[:, l].clamp_min(0).sqrt().float() for l, n in enumerate(names)},
            weights=weights.float(),
            gram=gram,
            all_dropped=not bool(kept.any()),
            names=list(names),
        )
        return weights, stats

    def _project(self, gram: Tensor) -> Tensor:
        if gram.shape[1] == 2:
            return gr_weights(gram)
        return pcgrad_weights(gram, self.generator)

    def _write(self, grads: list[Tensor]) -> None:
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                g = g.to(dtype=p.dtype, device=p.device).reshape(p.shape)
                if p.grad is None:
                    p.grad = g.clone()
                else:
                    p.grad.add_(g)
