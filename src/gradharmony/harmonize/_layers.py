"""Per-layer, per-group gradients of the supported modules from recorded activations.

A recorded *call* is one forward of a module: its input, its output and (BatchNorm) the
statistics it normalised with. With ``Delta^l`` the gradient of loss l at the call's output,
every supported parameter's gradient is a sum over rows, so the part of group g is the sum
over that group's rows (rows of a call are grouped contiguously: group g owns rows
``[g * N / G, (g + 1) * N / G)``). Linear and convolution weights are ``A^T Delta`` with
``A`` the (unfolded) input; norm affine parameters are ``sum(x_hat * Delta)`` and
``sum(Delta)``; embeddings scatter ``Delta`` into the looked-up rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from gradharmony._dist import multi_rank

from ._rules import register_rule

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class Scratch:
    """One float32 buffer a step's short-lived temporaries take turns in (a fresh large
    allocation costs a page fault per 4 KiB the first time it is written).

    Example:
        >>> s = Scratch()
        >>> a = s.take((2, 3), torch.device("cpu"))
        >>> b = s.take((3,), torch.device("cpu"))  # reuses a's memory: a is no longer valid
        >>> a.shape, b.data_ptr() == a.data_ptr()
        (torch.Size([2, 3]), True)
    """

    def __init__(self):
        self._buf: Tensor | None = None

    def take(self, shape: tuple[int, ...], device: torch.device) -> Tensor:
        """A float32 tensor of ``shape``, valid until the next :meth:`take`."""
        n = math.prod(shape)
        if self._buf is None or self._buf.numel() < n or self._buf.device != device:
            self._buf = None  # let the old buffer go before the larger one is allocated
            self._buf = torch.empty(n, device=device)
        return self._buf[:n].view(shape)


@dataclass
class Call:
    """One recorded forward of a module.

    ``edges`` are the autograd edges of the outputs (not the output tensors, which autograd
    may free when it does not save them); ``deltas[l]`` the loss-l gradients at them. ``inp``
    is the input a layer rule needs (generic calls keep ``args``/``kwargs``); ``covers`` the
    names (relative to the module) of the parameters this call's rule differentiates;
    ``stops`` the autograd nodes of the call's tensor inputs (where the call's part of the
    graph ends); ``rows`` its row count on the batch dimension.
    """

    module: nn.Module
    inp: Tensor | None
    edges: list[GradientEdge]
    rows: int
    covers: tuple[str, ...] = ()
    stops: tuple = ()
    stats: tuple[Tensor, Tensor] | None = None  # BatchNorm (mean, invstd) used in the forward
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    check: Tensor | None = None  # generic calls: per-row sums of the first output
    in_dims: list = field(default_factory=list)  # generic calls: batch dim per input leaf
    rule: type | None = None  # the rule that differentiates this call
    out_index: list = field(default_factory=list)  # generic calls: recorded output tensors
    deltas: list = field(default_factory=list)  # per loss: per output edge, or None

    @property
    def edge(self) -> GradientEdge | None:
        return self.edges[0] if self.edges else None


def batchnorm_stats(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """The (mean, invstd) per channel that ``module`` used to normalise ``x``."""
    use_batch = module.training or module.running_mean is None
    if not use_batch:
        mean, var = module.running_mean.float(), module.running_var.float()
    else:
        dims = [d for d in range(x.dim()) if d != 1]
        xf = x.detach().float()
        count = torch.tensor(float(xf.numel() // xf.shape[1]), device=xf.device)
        total, sq = xf.sum(dims), (xf * xf).sum(dims)
        if isinstance(module, nn.SyncBatchNorm) and multi_rank():
            import torch.distributed as dist

            packed = torch.cat([total, sq, count.view(1)])
            dist.all_reduce(packed)
            total, sq, count = packed[: len(total)], packed[len(total) : -1], packed[-1]
        mean = total / count
        var = (sq / count - mean * mean).clamp_min(0.0)
    return mean, torch.rsqrt(var + module.eps)


def _conv_patches(module: nn.Module, x: Tensor) -> Tensor:
    """im2col: ``[N, C, *spatial]`` -> ``[N, T, C * prod(kernel)]`` matching the weight layout."""
    nd = x.dim() - 2
    if module.padding != "valid" and any(module._reversed_padding_repeated_twice):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
    for i in range(nd):
        k, s, d = module.kernel_size[i], module.stride[i], module.dilation[i]
        x = x.unfold(2 + i, d * (k - 1) + 1, s)
        if d > 1:
            x = x[..., ::d]
    n, c = x.shape[:2]
    perm = [0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd)]
    x = x.permute(perm)
    return x.reshape(n, -1, c * math.prod(module.kernel_size))


def _stacked_gram(rows: Tensor, reached: list[int], num_losses: int) -> Tensor:
    """``[G, L, L]`` float64 Gramian of per-loss rows stacked as ``[R, G, ...]``.

    One batched product over the groups (``reached[r]`` names the loss of ``rows[r]``; the
    entries of losses not reached stay 0): far faster than one dot product per pair.
    """
    R, G = rows.shape[:2]
    flat = rows.reshape(R, G, -1).transpose(0, 1)
    inner = torch.bmm(flat, flat.transpose(1, 2)).double()
    out = torch.zeros(G, num_losses, num_losses, dtype=torch.float64, device=rows.device)
    index = torch.tensor(reached, device=rows.device)
    out[:, index[:, None], index[None, :]] = inner
    return out


def linear_form(call: Call, delta: Tensor | None = None) -> Tensor:
    """Rows of the input ``A: [N, T, in]`` (or of ``delta``: ``[N, T, out]``) in float32."""
    m = call.module
    conv = isinstance(m, _CONV)
    if delta is not None:
        if conv:
            return delta.float().movedim(1, -1).reshape(delta.shape[0], -1, delta.shape[1])
        return delta.float().reshape(delta.shape[0], -1, delta.shape[-1])
    if conv:
        return _conv_patches(m, call.inp.float())
    return call.inp.float().reshape(call.inp.shape[0], -1, call.inp.shape[-1])


def normalized(call: Call) -> Tensor:
    """``x_hat``: the call's input normalised as the norm layer did (before its affine)."""
    m, x = call.module, call.inp.float()
    if isinstance(m, nn.LayerNorm):
        return F.layer_norm(x, tuple(m.normalized_shape), eps=m.eps)
    mean, invstd = call.stats
    view = [1, -1] + [1] * (x.dim() - 2)
    return (x - mean.view(view)) * invstd.view(view)


def diag_groups(call: Call, delta: Tensor, xhat: Tensor, groups: int,
                names: tuple[str, ...] = ("weight", "bias")) -> dict[str, Tensor]:  # fmt: skip
    """Per-group gradients ``[G, *shape]`` of a norm layer's ``weight`` and ``bias`` (those in
    ``names``): ``x_hat * Delta`` and ``Delta`` summed over each group's rows and positions."""
    m, d = call.module, delta.float()
    if isinstance(m, nn.LayerNorm):
        flat = (groups, -1, *m.normalized_shape)
        parts = {"weight": lambda: (xhat * d).reshape(flat), "bias": lambda: d.reshape(flat)}
        return {n: parts[n]().sum(1) for n in names}
    flat = (groups, -1, d.shape[1], math.prod(d.shape[2:]))
    parts = {"weight": lambda: (xhat * d).reshape(flat), "bias": lambda: d.reshape(flat)}
    return {n: parts[n]().sum((1, 3)) for n in names}


class ModuleWork:
    """Gramian contribution and update of one module's parameters over its recorded calls.

    Parameters named in ``dense`` get contributions from elsewhere too (a tied weight, a
    table also used outside the module's forward): for them the work only hands out its
    per-group gradients (:meth:`dense`) and leaves the Gramian and the update to the caller.
    Subclasses are the rules, registered per layer type with ``register_rule``.
    """

    reduces_on_arrival = False

    def __init__(self, module, calls, groups, num_losses, strategy="auto", budget=None,
                 dense=()):  # fmt: skip
        self.module, self.calls, self.G, self.L = module, calls, groups, num_losses
        self.strategy = strategy
        self.budget = budget if budget is not None else [0]
        self.dense_names = set(dense)
        self.kept: dict[str, list[Tensor | None]] = {}
        self.recompute_weight = False
        self.device = _device_of(calls[0])
        self.reached = False
        self.scratch = Scratch()  # the Harmonizer gives every work of a step the same one
        for call in calls:
            call.deltas = [None] * num_losses

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        """Whether this rule handles ``module``'s configuration (else the generic rule does)."""
        return True

    def names(self) -> list[str]:
        """The trainable parameters (names relative to the module) this work differentiates."""
        return list(self.calls[0].covers)

    def _trainable(self, name: str) -> bool:
        return name in self.calls[0].covers

    def _group(self, rows: Tensor) -> Tensor:
        return rows.reshape(self.G, rows.shape[0] // self.G, *rows.shape[1:]).sum(1)

    def _add(self, name: str, loss: int, value: Tensor) -> None:
        grads = self.kept.setdefault(name, [None] * self.L)
        grads[loss] = value if grads[loss] is None else grads[loss] + value

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        """Take loss ``loss``'s gradient at output ``slot`` of call ``index``."""
        raise NotImplementedError

    def finish(self, index: int) -> None:
        """Every loss reaching call ``index`` has delivered its output gradients."""

    def gram(self) -> Tensor:
        """This module's contribution ``[G, L, L]`` (float64) to the per-group Gramian."""
        return self._kept_gram(set())

    def _kept_gram(self, counted: set) -> Tensor:
        out = torch.zeros(self.G, self.L, self.L, dtype=torch.float64, device=self.device)
        for name, grads in self.kept.items():
            if name in counted or name in self.dense_names:
                continue
            reached = [l for l, g in enumerate(grads) if g is not None]
            if reached:
                rows = torch.stack([grads[l].reshape(self.G, -1) for l in reached])
                out += _stacked_gram(rows, reached, self.L)
        return out

    def dense(self, name: str) -> list[Tensor | None]:
        """Per-loss per-group gradients ``[G, *shape]`` of a parameter named in ``dense``."""
        return self.kept.get(name, [None] * self.L)

    def update(self, weights: Tensor) -> dict[str, Tensor]:
        """Parameter gradients ``sum_g sum_l w[g, l] G_g^l`` for loss weights ``[G, L]``."""
        w = weights.float().to(self.device)
        grads = {}
        for name, per_loss in self.kept.items():
            if name not in self.dense_names:
                total = _combine(w, per_loss)
                if total is not None:
                    grads[name] = total
        return grads

    def release(self) -> None:
        """Drop the recorded tensors once the update no longer needs them."""
        for call in self.calls:
            call.inp, call.deltas, call.args, call.kwargs = None, [], (), {}


def _device_of(call: Call) -> torch.device:
    if call.inp is not None:
        return call.inp.device
    return next(call.module.parameters()).device


def _combine(w: Tensor, per_loss: list[Tensor | None]) -> Tensor | None:
    total = None
    for l, g in enumerate(per_loss):
        if g is not None:
            term = torch.tensordot(w[:, l].to(g.dtype), g, dims=([0], [0]))
            total = term if total is None else total + term
    return total


@register_rule(nn.LayerNorm, *_NORM)
class NormWork(ModuleWork):
    """LayerNorm and BatchNorm affine parameters: ``sum(x_hat * Delta)`` and ``sum(Delta)``,
    folded into per-group sums as each output gradient arrives."""

    reduces_on_arrival = True

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        self.reached = True
        if not hasattr(self, "_xhat"):
            self._xhat = {}
        call = self.calls[index]
        if index not in self._xhat:  # normalised once for every loss
            self._xhat[index] = normalized(call)
        names = tuple(n for n in ("weight", "bias") if self._trainable(n))
        for name, grads in diag_groups(call, delta, self._xhat[index], self.G, names).items():
            self._add(name, loss, grads)

    def finish(self, index: int) -> None:
        getattr(self, "_xhat", {}).pop(index, None)


@register_rule(nn.Linear, *_CONV)
class LinearWork(ModuleWork):
    """Linear and (groups = 1) convolution weights ``A^T Delta`` and biases ``sum(Delta)``.

    ``strategy`` picks how the weight enters the Gramian: ``"materialize"`` builds the
    per-group gradients ``[G, out, in]``; ``"ghost"`` uses
    ``<G_g^a, G_g^b> = sum_{c, c'} sum((A_c A_c'^T) * (Delta_c^a Delta_c'^b^T))`` over the
    group's rows of every pair of calls (cross-pass terms included); ``"auto"`` takes the
    cheaper by a flop count. With the ghost product the bias rides along: its gradient is
    ``Delta^T 1``, so adding 1 to every entry of ``A_c A_c'^T`` adds the bias's Gramian, and
    its update comes from the same combined ``sum_l w_l Delta^l`` as the weight's.
    Materialised per-group weight gradients are kept for the update
    when keeping them (and releasing the recorded inputs and output gradients) grows memory
    by no more than what is left of ``budget`` (a one-element list of bytes, shared by all
    modules of a step; negative: never keep); otherwise the update is recomputed as
    ``A^T (sum_l w_l Delta^l)``. A weight in ``dense`` is always materialised and kept.
    """

    fused_bias = False

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return not isinstance(module, _CONV) or (module.groups == 1 and not module.transposed)

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        self.reached = True
        self.calls[index].deltas[loss] = delta

    def gram(self) -> Tensor:
        counted = set()
        out = torch.zeros(self.G, self.L, self.L, dtype=torch.float64, device=self.device)
        if self._trainable("weight"):
            gram = self._linear_weight()
            if "weight" not in self.dense_names:
                out += gram
            counted.add("weight")  # kept or not, its Gramian is in already
        if not self.fused_bias:
            self._linear_bias()
        return out + self._kept_gram(counted)

    def _linear_bias(self) -> None:
        if not self._trainable("bias"):
            return
        for call in self.calls:
            for l, delta in enumerate(call.deltas):
                if delta is not None:
                    self._add("bias", l, _bias_rows(call, delta, self.G))

    def _linear_weight(self) -> Tensor:
        G = self.G
        calls = self.calls
        a_rows = [linear_form(c) for c in calls]
        n = [a.shape[0] // G * a.shape[1] for a in a_rows]
        d_in = a_rows[0].shape[-1]
        m = self.module
        d_out = m.out_channels if isinstance(m, _CONV) else m.out_features
        reach = [sum(d is not None for d in c.deltas) for c in calls]
        update = sum(ni * d_in * d_out for ni in n)
        mat = sum(ni * d_in * d_out * r for ni, r in zip(n, reach))
        ghost = sum(
            n[i] * n[j] * (d_in + d_out * (reach[i] if i == j else min(reach[i], reach[j])))
            for i in range(len(calls))
            for j in range(i, len(calls))
        )
        reached = sorted({l for c in calls for l, d in enumerate(c.deltas) if d is not None})
        size = 4 * G * len(reached) * d_in * d_out
        growth = size - self._recorded_bytes()  # keeping lets the recorded tensors go
        must_keep = "weight" in self.dense_names
        keep = must_keep or (self.budget[0] >= 0 and growth <= self.budget[0])
        strategy = "materialize" if must_keep else self.strategy
        if strategy == "auto":
            strategy = "materialize" if mat + (0 if keep else update) <= ghost + update else "ghost"
        if strategy == "ghost":
            self.recompute_weight = True
            self.fused_bias = self._trainable("bias") and "bias" not in self.dense_names
            return self._ghost(a_rows, self.fused_bias)
        slot = {l: k for k, l in enumerate(reached)}
        stacked = torch.zeros(len(reached), G, d_out, d_in, device=self.device)
        for call, a in zip(calls, a_rows):
            a_g = a.reshape(G, -1, d_in)
            for l, delta in enumerate(call.deltas):
                if delta is not None:
                    d_g = linear_form(call, delta).reshape(G, -1, d_out)
                    stacked[slot[l]].baddbmm_(d_g.transpose(1, 2), a_g)
        gram = _stacked_gram(stacked, reached, self.L)
        if keep:
            if not must_keep:
                self.budget[0] -= max(growth, 0)
            shape = (G, *m.weight.shape)
            self.kept["weight"] = [
                stacked[slot[l]].reshape(shape) if l in slot else None for l in range(self.L)
            ]
        else:
            self.recompute_weight = True
        return gram

    def _recorded_bytes(self) -> int:
        """Bytes of the inputs and output gradients this module's calls hold."""
        tensors = [t for c in self.calls for t in (c.inp, *c.deltas) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _ghost(self, a_rows: list[Tensor], bias: bool = False) -> Tensor:
        """Ghost Gramian over every pair of calls ``c <= c'``: with ``K = A_c A_c'^T``, each
        ``Y = K Delta_c'^b`` serves every loss a reaching call c through
        ``<Delta_c^a, Y> = sum(K * (Delta_c^a Delta_c'^b^T))`` (one product per loss of the
        side reached by fewer losses, not one per pair of losses)."""
        G, L, calls = self.G, self.L, self.calls
        out = torch.zeros(G, L, L, dtype=torch.float64, device=self.device)
        a_g = [a.reshape(G, -1, a.shape[-1]) for a in a_rows]
        d_g = [
            {l: linear_form(c, d).reshape(G, a.shape[1], -1) for l, d in enumerate(c.deltas)
             if d is not None}
            for c, a in zip(calls, a_g)
        ]  # fmt: skip
        for i in range(len(calls)):
            for j in range(i, len(calls)):
                if not d_g[i] or not d_g[j]:
                    continue
                k = torch.bmm(a_g[i], a_g[j].transpose(1, 2))
                if bias:  # the bias's rows: a column of ones appended to every A
                    k += 1.0
                out += self._ghost_pair(k, d_g[i], d_g[j], i == j)
        return out

    def _ghost_pair(self, k: Tensor, left: dict, right: dict, same: bool) -> Tensor:
        """Gramian terms ``sum(K * (Delta^a Delta'^b^T))`` of one pair of calls (both orders
        when the calls differ)."""
        out = torch.zeros(self.G, self.L, self.L, dtype=torch.float64, device=k.device)
        if not same and len(left) < len(right):
            left, right, k = right, left, k.transpose(1, 2)
        for b, d_b in right.items():
            buf = self.scratch.take((k.shape[0], k.shape[1], d_b.shape[2]), k.device)
            y = torch.bmm(k, d_b, out=buf)
            flat_y = y.reshape(self.G, -1)
            for a, d_a in left.items():
                if same and a > b:
                    continue
                v = torch.linalg.vecdot(d_a.reshape(self.G, -1), flat_y).double()
                if same and a == b:
                    out[:, a, a] += v
                else:
                    out[:, a, b] += v
                    out[:, b, a] += v
        return out

    def _combined_delta(self, call: Call, w: Tensor) -> Tensor | None:
        """``sum_l w_l Delta^l`` of one call in the layout of its output gradients, each row
        weighted by its group's weights. A single loss weighted 1 everywhere is returned as
        it is; otherwise the sum is written into the step's scratch buffer (valid until the
        next temporary is taken)."""
        terms = []
        for l, delta in enumerate(call.deltas):
            if delta is None or not bool(w[:, l].any()):
                continue
            scale = None
            if not bool((w[:, l] == 1).all()):
                rows = w[:, l].repeat_interleave(delta.shape[0] // self.G)
                scale = rows.view(-1, *([1] * (delta.dim() - 1)))
            terms.append((delta.float(), scale))
        if not terms:
            return None
        first, scale = terms[0]
        if len(terms) == 1 and scale is None:
            return first
        comb = self.scratch.take(tuple(first.shape), first.device)
        if scale is None:
            comb.copy_(first)
        else:
            torch.mul(first, scale, out=comb)
        for d, scale in terms[1:]:
            comb.add_(d) if scale is None else comb.addcmul_(d, scale)
        return comb

    def update(self, weights: Tensor) -> dict[str, Tensor]:
        grads = super().update(weights)
        if not self.recompute_weight:
            return grads
        w = weights.float().to(self.device)
        weight = bias = None
        for call in self.calls:
            if all(d is None for d in call.deltas):
                continue
            comb = self._combined_delta(call, w)
            if comb is None:  # every group of every loss reaching the call weighted 0
                continue
            gw, gb = _weight_grads(self.module, call, comb, self.fused_bias)
            weight = gw if weight is None else weight + gw
            if gb is not None:
                bias = gb if bias is None else bias + gb
        m = self.module
        grads["weight"] = torch.zeros(m.weight.shape, device=self.device) if weight is None \
            else weight.reshape(m.weight.shape)  # fmt: skip
        if self.fused_bias:
            grads["bias"] = torch.zeros(m.bias.shape, device=self.device) if bias is None \
                else bias  # fmt: skip
        return grads


def _bias_rows(call: Call, delta: Tensor, groups: int) -> Tensor:
    """Per-group bias gradients ``[G, out]`` of a Linear/Conv call: ``delta`` summed over
    the group's rows and positions."""
    d = delta.float()
    if isinstance(call.module, _CONV):
        return d.reshape(groups, -1, d.shape[1], math.prod(d.shape[2:])).sum((1, 3))
    return d.reshape(groups, -1, d.shape[-1]).sum(1)


def _weight_grads(module: nn.Module, call: Call, comb: Tensor, bias: bool):
    """``A^T comb`` of one call (and ``sum(comb)`` when ``bias``): a Linear's as one matrix
    product, a convolution's by the convolution's own weight-gradient kernel."""
    if isinstance(module, _CONV):
        x = call.inp.float()
        nd = x.dim() - 2
        if module.padding != "valid" and any(module._reversed_padding_repeated_twice):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        _, gw, gb = torch.ops.aten.convolution_backward(
            comb, x, module.weight.detach().float(), [comb.shape[1]] if bias else None,
            module.stride, [0] * nd, module.dilation, False, [0] * nd, 1, [False, True, bias],
        )  # fmt: skip
        return gw, gb
    d = comb.reshape(-1, comb.shape[-1])
    a = call.inp.float().reshape(-1, call.inp.shape[-1])
    return d.T @ a, d.sum(0) if bias else None


@register_rule(nn.Embedding)
class EmbeddingWork(ModuleWork):
    """Embedding tables: each output gradient is scattered into per-(group, index) rows as it
    arrives (sparse: one row per distinct (group, index) over all calls)."""

    reduces_on_arrival = True

    @staticmethod
    def accepts(module: nn.Module) -> bool:
        return not (module.sparse or module.scale_grad_by_freq or module.max_norm is not None)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._rows = self._embedding_rows()
        self.sparse = None

    def _embedding_rows(self):
        """Distinct (group, index) keys over all calls and each call's position in them."""
        num, G = self.module.num_embeddings, self.G
        keys = []
        for call in self.calls:
            idx = call.inp
            group = torch.arange(idx.shape[0], device=idx.device) // (idx.shape[0] // G)
            group = group.view(-1, *([1] * (idx.dim() - 1))).expand_as(idx)
            keys.append((group * num + idx).reshape(-1))
        uniq, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        per_call = list(inverse.split([k.numel() for k in keys]))
        return uniq, per_call, [None] * self.L

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        self.reached = True
        m, call = self.module, self.calls[index]
        if not self._trainable("weight"):
            return
        uniq, per_call, per_loss = self._rows
        d = delta.float().reshape(-1, delta.shape[-1])
        if m.padding_idx is not None:
            d = d * (call.inp.reshape(-1) != m.padding_idx).unsqueeze(1)
        if per_loss[loss] is None:
            per_loss[loss] = torch.zeros(uniq.numel(), m.embedding_dim, device=d.device)
        per_loss[loss].index_add_(0, per_call[index], d)

    def gram(self) -> Tensor:
        G, num = self.G, self.module.num_embeddings
        out = torch.zeros(G, self.L, self.L, dtype=torch.float64, device=self.device)
        if not self._trainable("weight"):
            return out
        uniq, _, per_loss = self._rows
        group_of = uniq // num
        self.sparse = (uniq % num, group_of, per_loss)
        if "weight" in self.dense_names:
            return out
        for a in range(self.L):
            for b in range(a, self.L):
                if per_loss[a] is None or per_loss[b] is None:
                    continue
                prod = (per_loss[a] * per_loss[b]).sum(1).double()
                v = torch.zeros(G, dtype=torch.float64, device=self.device)
                v = v.index_add_(0, group_of, prod)
                out[:, a, b] += v
                if a != b:
                    out[:, b, a] += v
        return out

    def dense(self, name: str) -> list[Tensor | None]:
        rows, group_of, per_loss = self.sparse
        shape = (self.G, *self.module.weight.shape)
        out = []
        for g in per_loss:
            if g is None:
                out.append(None)
                continue
            full = torch.zeros(shape, device=self.device)
            full.index_put_((group_of, rows), g, accumulate=True)
            out.append(full)
        return out

    def update(self, weights: Tensor) -> dict[str, Tensor]:
        if self.sparse is None or "weight" in self.dense_names:
            return {}
        w = weights.float().to(self.device)
        rows, group_of, per_loss = self.sparse
        combined = sum(
            w[group_of, l].unsqueeze(1) * g for l, g in enumerate(per_loss) if g is not None
        )
        weight = self.module.weight
        grad = torch.zeros(weight.shape, device=self.device).index_add_(0, rows, combined)
        return {"weight": grad}


def same_function_rule(module: nn.Module, inp: Tensor, output: Tensor) -> type | None:
    """A layer rule for a subclass of ``nn.LayerNorm`` or ``nn.Linear`` that overrides
    ``forward`` (to cast dtypes, say) when this call's output is what the parent computes
    from the same input and parameters (checked on the first rows: the layers treat rows
    independently); None otherwise (the generic rule)."""
    if type(output) is not Tensor or not isinstance(inp, Tensor):
        return None
    if isinstance(module, nn.LayerNorm):
        rule, args = NormWork, (module.normalized_shape, module.weight, module.bias, module.eps)
        parent = F.layer_norm
    elif isinstance(module, nn.Linear):
        rule, args, parent = LinearWork, (module.weight, module.bias), F.linear
    else:
        return None
    if inp.dim() < 2 or inp.shape[:1] != output.shape[:1]:
        return None
    with torch.no_grad():  # rows are independent: the first two tell the function
        try:
            ref = parent(inp[:2], *args)
        except RuntimeError:  # another input layout (a channels-first LayerNorm)
            return None
        out = output[:2]
        if ref.shape != out.shape:
            return None
        ref, out = ref.to(out.dtype), out.detach()
        close = ((ref - out).abs() <= 1e-6 + 1e-5 * out.abs()) | (ref == out)  # allclose
        if not bool(close.all()):
            return None
    return rule
