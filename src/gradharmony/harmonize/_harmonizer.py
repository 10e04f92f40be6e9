"""The Harmonizer: per-group gradient conflicts and harmonized updates for any layered model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge
from torch.utils._pytree import tree_leaves, tree_map

from gradharmony._dist import multi_rank

from . import _attention  # noqa: F401  (registers the attention rule)
from ._backward import OutputGradients, _broadcasts, _reach
from ._functional import gram_cosine
from ._generic import GenericWork, output_tensors, row_check
from ._graph import Landings, analyse
from ._layers import (
    _NORM,
    Call,
    EmbeddingWork,
    Scratch,
    _combine,
    _stacked_gram,
    batchnorm_stats,
    same_function_rule,
)
from ._methods import (
    DROPPING_METHODS,
    METHODS,
    GammaSchedule,
    GradVac,
    both_rule,
    gr_weights,
    pcgrad_weights,
    reweight_weights,
    small_loss_rule,
)
from ._rules import rule_for


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

    return dist if multi_rank() else None


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
    """Cross-modality gradient harmonization for any PyTorch model.

    Forward hooks record every call of a module with trainable parameters while grad is
    enabled. :meth:`backward` asks autograd once per loss for the gradient at the recorded
    outputs (no weight-gradient work), builds each group's Gramian layer by layer (cross-pass
    terms included: one triplet's video, audio and text passes all touch the shared weights),
    turns it into loss weights with the chosen method and writes
    ``sum_groups sum_l w_gl G_g^l`` into ``p.grad`` from the stored tensors (no third backward).
    Linear, Conv (groups = 1), LayerNorm, BatchNorm, Embedding and MultiheadAttention have
    dedicated rules (``register_rule`` adds one); any other module with parameters takes the
    generic rule (per-group ``torch.func`` vector-Jacobian products); a parameter used outside
    every recorded call (a class token, a position table, a projection) is attributed where it
    meets the batch. Every use of every trainable parameter is accounted for, or
    :meth:`backward` raises naming the parameters.

    Args:
        model: the module whose trainable parameters receive the update (tied parameters:
            the contributions of every use are summed). ``nn.Embedding`` with
            ``sparse``/``scale_grad_by_freq``/``max_norm`` is rejected (all offenders named).
        method: ``baseline | rw-va | rw-vt | gr | gradvac | cl | both | small-loss``. ``gr`` is
            Algorithm 1 for two losses and PCGrad (random pairwise order, seeded) for more.
            ``cl`` drops a group when ``cos <= gamma``; ``both`` also projects when
            ``gamma < cos < 0``.
            ``small-loss`` drops as many groups as ``cl`` would, choosing those of the
            highest ``scores`` (per-triplet losses, given to :meth:`backward`).
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
        loss_params: names of *loss-level* parameters (besides the automatic ones: scalars used
            outside every layer, such as CLIP's ``logit_scale``, and parameters used only
            after the model's forward returned). They are in no triplet's passes: left out of
            the Gramian, they get ``sum_l mean_g(w_gl) grad_l``, the plain gradient of the
            losses weighted as the groups are on average (``baseline``: the plain gradient).
        check: also compute the plain gradient of the summed losses and raise, naming the
            parameters, when the per-group gradients do not sum to it (costs one backward).

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
        loss_params: tuple[str, ...] | list[str] = (),
        check: bool = False,
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
        if method not in DROPPING_METHODS and total_steps is None:
            g1 = g0  # gamma is only reported; no schedule needed
        self.schedule = GammaSchedule(g0, g1, total_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.gradvac = GradVac(beta, generator=self.generator)
        self.model = model
        self.check = check
        self.params, self._names, self._rule = self._check_model(model)
        by_name = dict(model.named_parameters())
        unknown = [n for n in loss_params if n not in by_name]
        if unknown:
            raise ValueError(f"loss_params {unknown} are not parameters of the model")
        self._loss_ids = {id(by_name[n]) for n in loss_params}
        self._records: list[Call] = []
        self._in_backward = False
        self._scores: Tensor | None = None
        self._reentrant = False
        self._seq = 0
        self._last: dict[nn.Module, int] = {}
        self._start: dict[nn.Module, list[int]] = {}
        hooked = list(self._rule)
        self._whole = {m for m, r in self._rule.items() if self._covers_all(m, r)}
        within = {d for m in self._whole for d in m.modules() if d is not m}
        self._below = {
            m: [d for d in m.modules() if d is not m and d in self._rule and d not in within]
            for m in hooked
        }
        self._outputs: list = []
        self._handles = [model.register_forward_hook(self._model_hook)]
        for m in hooked:
            self._handles.append(m.register_forward_pre_hook(self._pre_hook))
            self._handles.append(m.register_forward_hook(self._hook, with_kwargs=True))

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
    def _check_model(model: nn.Module):
        """Trainable parameters (tied ones once), their names and each owner's rule."""
        params, names, rules, bad = [], {}, {}, []
        for mod_name, module in model.named_modules():
            direct = [(n, p) for n, p in module.named_parameters(recurse=False) if p.requires_grad]
            rule = rule_for(module)
            whole = rule is not None and issubclass(rule, GenericWork)  # e.g. attention
            if not direct and not (whole and any(p.requires_grad for p in module.parameters())):
                continue
            if isinstance(module, nn.Embedding) and not EmbeddingWork.accepts(module):
                bad.append(mod_name or type(module).__name__)
            rules[module] = rule or GenericWork
            for p_name, p in direct:
                if id(p) not in names:
                    names[id(p)] = f"{mod_name}.{p_name}" if mod_name else p_name
                    params.append(p)
        if bad:
            raise ValueError(
                f"modules {bad}: nn.Embedding with sparse=True, scale_grad_by_freq=True or "
                "max_norm is not supported (the gradient depends on the whole batch, or the "
                "lookup rescales the table in place)"
            )
        if not params:
            raise ValueError("model has no trainable parameters")
        return params, names, rules

    def _model_hook(self, module: nn.Module, args: tuple, output) -> None:
        """Remember where the model's forward ends: uses after it belong to the losses."""
        if not self._in_backward and torch.is_grad_enabled():
            self._outputs += [t.grad_fn for t in output_tensors(output) if t.grad_fn is not None]

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        if self._in_backward:
            return
        self._seq += 1
        self._last[module] = self._seq
        self._start.setdefault(module, []).append(self._seq)

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output) -> None:
        if self._in_backward:
            return
        start = self._start[module].pop()
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if not torch.is_grad_enabled():
            if any(t.requires_grad for t in leaves):
                self._reentrant = True
            return
        if self.group_size is None or (self.method == "baseline" and not self.measure):
            return  # one group: plain per-loss gradients, nothing to record
        outs = output_tensors(output)
        out_index = [i for i, t in enumerate(outs) if t.requires_grad and t.grad_fn is not None]
        if not out_index:
            return  # a leaf or no grad: no layer computation to differentiate through
        rule = self._rule[module]
        direct = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        edges = [get_gradient_edge(outs[i]) for i in out_index]
        stops = tuple(_node_of(t) for t in leaves if t.requires_grad)
        inp = args[0] if args else None
        if rule is GenericWork and len(leaves) == 1 and not kwargs:
            rule = same_function_rule(module, inp, output) or rule
        if not issubclass(rule, GenericWork):
            self._check_batched(module, inp)
            stats = batchnorm_stats(module, inp) if isinstance(module, _NORM) else None
            self._records.append(Call(module, inp.detach(), edges[:1], inp.shape[0],
                                      tuple(direct), stops, stats, rule=rule))  # fmt: skip
            return
        below = self._below[module]
        unused = [d for d in below if self._last.get(d, 0) < start]
        if below and not unused and module not in self._whole:
            return  # sub-layers all ran: its own parameters are attributed where they land
        covers = list(direct)
        if module in self._whole:
            unused = [d for d in module.modules() if d is not module]
        for name, sub in module.named_modules():
            if sub in unused:
                covers += [f"{name}.{n}" for n, p in sub.named_parameters(recurse=False)
                           if p.requires_grad]  # fmt: skip
                self._last[sub] = self._seq  # accounted for: used, for the enclosing modules
        dims, rows = rule.input_dims(module, args, kwargs)
        detached = tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, (args, kwargs))
        first = outs[out_index[0]]
        dim = rule.output_dim(module, 0)
        check = None
        if out_index[0] == 0 and first.dim() > dim and first.shape[dim] == rows:
            check = row_check(first, dim)
        self._records.append(Call(module, None, edges, rows, tuple(covers), stops, None,
                                  *detached, check, dims, rule, out_index))  # fmt: skip

    @staticmethod
    def _covers_all(module: nn.Module, rule: type) -> bool:
        """A registered generic rule (attention) differentiates its sub-modules too."""
        return issubclass(rule, GenericWork) and rule_for(module) is rule

    @staticmethod
    def _check_batched(module: nn.Module, inp) -> None:
        if isinstance(module, (nn.Embedding, nn.Linear, *_NORM)):
            expected = 1 if isinstance(module, nn.Embedding) else 2
        elif isinstance(module, nn.LayerNorm):
            expected = len(module.normalized_shape) + 1
        else:
            expected = module.weight.dim()
        if not isinstance(inp, Tensor) or inp.dim() < expected:
            raise RuntimeError(
                f"{type(module).__name__} was called on an input of shape "
                f"{None if inp is None else tuple(inp.shape)}; the Harmonizer needs a batch "
                "dimension (triplet on dim 0)"
            )

    def reset(self) -> None:
        """Forget the recorded forward calls."""
        self._records = []
        self._outputs = []
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
        self, losses: dict[str, Tensor], step: int = 0, batch_size: int | None = None,
        scores: Tensor | None = None,
    ) -> HarmonizeStats:
        """Write the harmonized update into ``p.grad`` and return per-group statistics.

        ``losses`` maps names to scalar losses (``{"va": ..., "vt": ...}``; the ``rw-*``
        methods look the names up). ``step`` drives the gamma schedule. ``batch_size`` is the
        number of triplets B (default: the smallest row count among the recorded calls); a
        call whose row count is not a multiple of B raises. Run one forward of the batch per
        backward: every recorded call maps its row r to triplet ``r // (rows / B)``.
        On any error ``p.grad`` is left untouched. When ``stats.all_dropped`` is True the
        gradients are zero: skip ``optimizer.step()`` so Adam moments do not move.
        ``scores`` (``small-loss`` only, required there): one score per triplet ``[B]``, e.g.
        the per-triplet losses; a group's score is the mean of its triplets'.
        """
        try:
            names, tensors = self._validate(losses)
            self._scores = self._check_scores(scores)
            self._in_backward = True
            if self.method == "baseline" and not self.measure:
                return self._plain(names, tensors, step)
            if self.group_size is None:
                return self._batch(names, tensors, step)
            return self._grouped(names, tensors, step, batch_size)
        finally:
            self._in_backward = False
            self._scores = None
            self.reset()

    def _check_scores(self, scores) -> Tensor | None:
        if self.method != "small-loss":
            if scores is not None:
                raise ValueError(f"scores are used by method 'small-loss' only, not "
                                 f"{self.method!r}")
            return None
        if scores is None:
            raise ValueError("method 'small-loss' needs scores=: one score (loss) per triplet")
        scores = torch.as_tensor(scores).detach().reshape(-1).double().cpu()
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores must be finite")
        return scores

    def _group_scores(self, groups: int) -> Tensor:
        s = self._scores
        if s.numel() % groups:
            raise ValueError(f"{s.numel()} scores do not split into {groups} groups")
        return s.reshape(groups, -1).mean(1)

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
        records, B = self._batched_calls(records, tensors, batch_size)
        if B % self.group_size:
            raise ValueError(
                f"granularity {self.group_size} does not divide the batch size {B}"
            )
        if self._scores is not None and self._scores.numel() != B:
            raise ValueError(f"scores: {self._scores.numel()} values for a batch of {B} triplets")
        G = B // self.group_size
        L = len(names)
        cov = analyse(tensors, records, self.params, self._names, B, self._loss_ids,
                      self._outputs)  # fmt: skip
        plain = self._plain_grads(tensors) if self.check else None
        level = self._loss_level_grads(tensors, cov.loss_level)
        landings = Landings(cov.landings, G, L, slots=cov.slots)
        by_module: dict[tuple, list[Call]] = {}
        for c in records:
            by_module.setdefault((c.module, c.rule), []).append(c)
        budget, scratch = [self.keep_bytes], Scratch()
        works = []
        for (m, rule), calls in by_module.items():
            dense = [n for n in calls[0].covers if id(m.get_parameter(n)) in cov.dense]
            if len({r for mod, r in by_module if mod is m}) > 1:
                dense = list(calls[0].covers)  # one module, two rules: sum their parts
            works.append(rule(m, calls, G, L, self.strategy, budget, dense))
            works[-1].scratch = scratch
        self._records = []
        edges = [e for c in records for e in c.edges] + landings.edges
        grads = OutputGradients(tensors, edges)
        landings.attach(grads)
        try:
            self._collect_output_gradients(names, grads, records, works, landings)
        finally:
            landings.detach()
        del records
        with torch.no_grad():
            return self._grouped_update(names, works, landings, cov, level, plain, G, step)

    def _batched_calls(self, records, tensors, batch_size) -> tuple[list[Call], int]:
        """The calls whose rows hold the batch, and the batch size B.

        A call whose output is broadcast over the batch (a table looked up without the batch
        dimension) is left out: its parameters are attributed where the broadcast lands.
        """
        edges = [c.edges[0] for c in records]
        nodes = _reach([t.grad_fn for t in tensors])
        spread = _broadcasts(nodes, edges)
        kept = [c for i, c in enumerate(records) if i not in spread and c.rows > 0]
        if batch_size is None and not kept:
            raise RuntimeError("no recorded call holds the batch; pass batch_size=")
        B = batch_size or min(c.rows for c in kept)
        for c in kept:
            if c.rows % B:
                raise ValueError(
                    f"{type(c.module).__name__} was called with {c.rows} rows, not a multiple "
                    f"of the batch size {B}; pass batch_size= or keep the triplet on dim 0"
                )
        return kept, B

    def _plain_grads(self, tensors) -> list[Tensor]:
        grads = torch.autograd.grad(sum(tensors), self.params, retain_graph=True,
                                    allow_unused=True)  # fmt: skip
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    @staticmethod
    def _loss_level_grads(tensors, params) -> list[list[Tensor | None]]:
        """Per loss, the plain gradients of the loss-level parameters."""
        if not params:
            return []
        return [
            list(torch.autograd.grad(t, params, retain_graph=True, allow_unused=True))
            for t in tensors
        ]

    def _collect_output_gradients(self, names, grads, records, works, landings) -> None:
        """Hand every loss's gradient at every recorded output to its module, as it arrives.

        A call of a norm layer, embedding or generic module keeps no output gradient (its
        work folds each into per-group sums), and its inputs are dropped once every loss
        reaching it delivered.
        """
        where = {id(call): (work, i) for work in works for i, call in enumerate(work.calls)}
        slot = {}
        for call in records:
            for j in range(len(call.edges)):
                slot[len(slot)] = (*where[id(call)], j)
        first_landing = len(slot)
        waiting = {}
        for k, (work, i, _) in slot.items():
            waiting[(id(work), i)] = waiting.get((id(work), i), 0) + len(grads.reached[k])
        reached = [False] * len(names)
        with torch.no_grad():
            for l, indices, values in grads:
                for k, g in zip(indices, values):
                    if g is None:
                        continue
                    reached[l] = True
                    if k >= first_landing:
                        landings.absorb(k - first_landing, l, g)
                        continue
                    work, i, j = slot[k]
                    work.absorb(i, l, g, j)
                    waiting[(id(work), i)] -= 1
                    if waiting[(id(work), i)] == 0:
                        work.finish(i)
                        if work.reduces_on_arrival:
                            call = work.calls[i]
                            call.inp, call.args, call.kwargs = None, (), {}
        for c in records:
            c.edges = []
        for name, ok in zip(names, reached):
            if not ok:
                raise RuntimeError(f"loss {name!r} does not depend on the model's parameters")

    def _grouped_update(self, names, works, landings, cov, level, plain, G, step):
        L = len(names)
        works = [w for w in works if w.reached]
        device = works[0].device if works else self.params[0].device
        gram = torch.zeros(G, L, L, dtype=torch.float64, device=device)
        for work in works:
            gram += work.gram()
            if not work.recompute_weight:
                work.release()
        dense = self._dense_totals(works, landings)
        for per_loss in dense.values():
            reached = [l for l, g in enumerate(per_loss) if g is not None]
            if reached:
                rows = torch.stack([per_loss[l].reshape(G, -1) for l in reached])
                gram += _stacked_gram(rows, reached, L).to(device)
        weights, stats = self._decide(names, gram.cpu(), step)
        if plain is not None:
            ones = torch.ones_like(weights)
            self._check_baseline(self._updates(works, dense, cov, level, ones), plain)
        updates = self._updates(works, dense, cov, level, weights, last=True)
        new = [updates[id(p)] if id(p) in updates else torch.zeros_like(p) for p in self.params]
        self._write(_all_reduce_tensors(new))
        return stats

    @staticmethod
    def _dense_totals(works, landings) -> dict[int, list]:
        """Per parameter with several sources, the summed per-loss per-group gradients."""
        totals: dict[int, list] = {}

        def add(i, per_loss):
            total = totals.setdefault(i, [None] * len(per_loss))
            for l, g in enumerate(per_loss):
                if g is not None:
                    total[l] = g if total[l] is None else total[l] + g

        for work in works:
            for name in work.dense_names:
                add(id(work.module.get_parameter(name)), work.dense(name))
        for i, per_loss in landings.dense.items():
            add(i, per_loss)
        return totals

    def _updates(self, works, dense, cov, level, weights, last=False) -> dict[int, Tensor]:
        """Every parameter's update for loss weights ``[G, L]``; ``last``: each work lets its
        recorded tensors go once its update is computed (the peak of the step)."""
        updates: dict[int, Tensor] = {}
        for work in works:
            for name, g in work.update(weights).items():
                p = work.module.get_parameter(name)
                updates[id(p)] = g.reshape(p.shape)
            if last:
                work.release()
        w = weights.float()
        for i, per_loss in dense.items():
            total = _combine(w.to(next(g for g in per_loss if g is not None).device), per_loss)
            if total is not None:
                updates[i] = total
        mean = w.mean(0)  # loss-level parameters: the plain gradient, losses weighted as a batch
        for k, p in enumerate(cov.loss_level):
            terms = [float(mean[l]) * g[k] for l, g in enumerate(level) if g[k] is not None]
            if terms:
                updates[id(p)] = sum(terms)
        return updates

    def _check_baseline(self, base: dict[int, Tensor], plain: list[Tensor]) -> None:
        wrong = []
        for p, g in zip(self.params, plain):
            got = base.get(id(p), torch.zeros_like(p)).to(g.dtype)
            scale = float(g.abs().max()) if g.numel() else 0.0
            if float((got - g).abs().max()) > 1e-4 * scale + 1e-6:
                wrong.append(self._names[id(p)])
        if wrong:
            raise RuntimeError(
                f"check=True: the per-group gradients of {wrong} do not sum to the plain "
                "gradient of the summed losses; a use of these parameters is not accounted "
                "for correctly"
            )

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
            if m == "small-loss":
                kept = small_loss_rule(decide_cos, gamma, self._group_scores(G))
            if m in ("cl", "small-loss"):
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
        """Accumulate ``grads`` into ``p.grad``; an empty ``p.grad`` takes the tensor itself
        (every update is computed fresh for this step) unless it shares memory with one
        already handed out."""
        taken = set()
        with torch.no_grad():
            for p, g in zip(self.params, grads):
                g = g.to(dtype=p.dtype, device=p.device).reshape(p.shape)
                if p.grad is not None:
                    p.grad.add_(g)
                    continue
                start = g.data_ptr()
                p.grad = g if start not in taken and g.is_contiguous() else g.clone()
                taken.add(start)


def _node_of(t: Tensor):
    """The autograd node producing ``t`` (its accumulator for a leaf)."""
    return t.grad_fn if t.grad_fn is not None else get_gradient_edge(t).node
