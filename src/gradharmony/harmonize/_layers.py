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

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm,)
SUPPORTED = (nn.Linear, nn.LayerNorm, nn.Embedding, *_CONV, *_NORM)


@dataclass
class Call:
    """One recorded forward of a supported module.

    ``edge`` is the autograd edge of the output (not the output tensor, which autograd may
    free when it does not save it); ``deltas`` the per-loss gradients at that output.
    """

    module: nn.Module
    inp: Tensor | None
    edge: GradientEdge | None
    stats: tuple[Tensor, Tensor] | None = None  # BatchNorm (mean, invstd) used in the forward
    deltas: list[Tensor | None] = field(default_factory=list)  # per loss, at the output

    @property
    def rows(self) -> int:
        return self.inp.shape[0]


def kind_of(module: nn.Module) -> str | None:
    """The rule that handles ``module``'s parameters, or None when unsupported."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, nn.LayerNorm):
        return "layernorm"
    if isinstance(module, _NORM):
        return "batchnorm"
    if isinstance(module, nn.Embedding):
        return "embedding"
    return None


def check_module(name: str, module: nn.Module) -> None:
    """Reject supported module types in configurations whose gradients are not handled."""
    if isinstance(module, _CONV) and (module.groups != 1 or module.transposed):
        raise ValueError(
            f"module {name!r}: only convolutions with groups=1 are supported "
            f"(got groups={module.groups})"
        )
    if isinstance(module, nn.Embedding) and (module.sparse or module.scale_grad_by_freq):
        raise ValueError(
            f"module {name!r}: nn.Embedding with sparse=True or scale_grad_by_freq=True "
            "is not supported"
        )


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
        if isinstance(module, nn.SyncBatchNorm) and _dist_ready():
            import torch.distributed as dist

            packed = torch.cat([total, sq, count.view(1)])
            dist.all_reduce(packed)
            total, sq, count = packed[: len(total)], packed[len(total) : -1], packed[-1]
        mean = total / count
        var = (sq / count - mean * mean).clamp_min(0.0)
    return mean, torch.rsqrt(var + module.eps)


def _dist_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


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
    if delta is not None:
        if isinstance(m, _CONV):
            return delta.float().movedim(1, -1).reshape(delta.shape[0], -1, delta.shape[1])
        return delta.float().reshape(delta.shape[0], -1, delta.shape[-1])
    if isinstance(m, _CONV):
        return _conv_patches(m, call.inp.float())
    return call.inp.float().reshape(call.inp.shape[0], -1, call.inp.shape[-1])


def diag_rows(call: Call, delta: Tensor) -> dict[str, Tensor]:
    """Per-row gradients ``[N, *shape]`` of a norm layer's ``weight`` and ``bias``."""
    m, x, d = call.module, call.inp.float(), delta.float()
    n = x.shape[0]
    if isinstance(m, nn.LayerNorm):
        shape = tuple(m.normalized_shape)
        xhat = F.layer_norm(x, shape, eps=m.eps)
        flat = (n, -1, *shape)
        return {"weight": (xhat * d).reshape(flat).sum(1), "bias": d.reshape(flat).sum(1)}
    mean, invstd = call.stats
    view = [1, -1] + [1] * (x.dim() - 2)
    xhat = (x - mean.view(view)) * invstd.view(view)
    dims = list(range(2, x.dim()))
    wd = (xhat * d).sum(dims) if dims else xhat * d
    return {"weight": wd, "bias": d.sum(dims) if dims else d}


class ModuleWork:
    """Gramian contribution and update of one module over all its recorded calls.

    ``strategy`` picks how Linear/Conv weights enter the Gramian: ``"materialize"`` builds the
    per-group gradients ``[G, out, in]``; ``"ghost"`` uses
    ``<G_g^a, G_g^b> = sum_{c, c'} sum((A_c A_c'^T) * (Delta_c^a Delta_c'^b^T))`` over the
    group's rows of every pair of calls (cross-pass terms included); ``"auto"`` takes the
    cheaper by a flop count. Materialised per-group weight gradients are kept for the update
    when keeping them (and releasing the recorded inputs and output gradients) grows memory
    by no more than what is left of ``budget`` (a one-element list of bytes, shared by all
    modules of a step; negative: never keep); otherwise the update is recomputed as
    ``A^T (sum_l w_l Delta^l)``.
    """

    def __init__(self, module, calls, groups, num_losses, strategy="auto", budget=None):
        self.module, self.calls, self.G, self.L = module, calls, groups, num_losses
        self.kind = kind_of(module)
        self.strategy = strategy
        self.budget = budget if budget is not None else [0]
        self.kept: dict[str, list[Tensor | None]] = {}
        self.sparse = None
        self.recompute_weight = False
        self.device = calls[0].inp.device
        self.reached = False
        for call in calls:
            call.deltas = [None] * num_losses
        self._rows = self._embedding_rows() if self.kind == "embedding" else None

    @property
    def reduces_on_arrival(self) -> bool:
        """Norms and embeddings fold each output gradient into small per-group sums at once."""
        return self.kind in ("layernorm", "batchnorm", "embedding")

    def absorb(self, index: int, loss: int, delta: Tensor) -> None:
        """Take loss ``loss``'s gradient at the output of call ``index``.

        Linear/Conv keep it for the Gramian and the update; norms reduce it to per-group
        weight/bias gradients and embeddings to per-(group, row) sums, and drop it.
        """
        self.reached = True
        call = self.calls[index]
        if self.kind == "embedding":
            self._absorb_embedding(index, loss, delta)
        elif self.reduces_on_arrival:
            for name, rows in diag_rows(call, delta).items():
                if self._trainable(name):
                    self._add(name, loss, self._group(rows))
        else:
            call.deltas[loss] = delta

    def _trainable(self, name: str) -> bool:
        p = getattr(self.module, name, None)
        return isinstance(p, nn.Parameter) and p.requires_grad

    def _group(self, rows: Tensor) -> Tensor:
        return rows.reshape(self.G, rows.shape[0] // self.G, *rows.shape[1:]).sum(1)

    def gram(self) -> Tensor:
        """This module's contribution ``[G, L, L]`` (float64) to the per-group Gramian."""
        if self.kind == "embedding":
            return self._embedding_gram()
        out = torch.zeros(self.G, self.L, self.L, dtype=torch.float64, device=self.device)
        counted = set()
        if not self.reduces_on_arrival:
            self._linear_bias()
            if self._trainable("weight"):
                out += self._linear_weight()
                counted.add("weight")  # kept or not, its Gramian is in already
        for name, grads in self.kept.items():
            if name not in counted:
                reached = [l for l, g in enumerate(grads) if g is not None]
                if reached:
                    rows = torch.stack([grads[l].reshape(self.G, -1) for l in reached])
                    out += _stacked_gram(rows, reached, self.L)
        return out

    def _add(self, name: str, loss: int, value: Tensor) -> None:
        grads = self.kept.setdefault(name, [None] * self.L)
        grads[loss] = value if grads[loss] is None else grads[loss] + value

    def _linear_bias(self) -> None:
        if not self._trainable("bias"):
            return
        for call in self.calls:
            for l, delta in enumerate(call.deltas):
                if delta is not None:
                    self._add("bias", l, self._group(linear_form(call, delta).sum(1)))

    def _linear_weight(self) -> Tensor:
        G = self.G
        calls = self.calls
        a_rows = [linear_form(c) for c in calls]
        n = [a.shape[0] // G * a.shape[1] for a in a_rows]
        d_in = a_rows[0].shape[-1]
        m = self.module
        d_out = m.out_channels if self.kind == "conv" else m.out_features
        reach = [sum(d is not None for d in c.deltas) for c in calls]
        update = sum(ni * d_in * d_out for ni in n)
        mat = sum(ni * d_in * d_out * r for ni, r in zip(n, reach))
        ghost = sum(
            n[i] * n[j] * (d_in + d_out * reach[i] * reach[j])
            for i in range(len(calls))
            for j in range(i, len(calls))
        )
        size = 4 * G * self.L * d_in * d_out
        growth = size - self._recorded_bytes()  # keeping lets the recorded tensors go
        keep = self.budget[0] >= 0 and growth <= self.budget[0]
        strategy = self.strategy
        if strategy == "auto":
            strategy = "materialize" if mat + (0 if keep else update) <= ghost + update else "ghost"
        if strategy == "ghost":
            self.recompute_weight = True
            return self._ghost(a_rows)
        reached = sorted({l for c in calls for l, d in enumerate(c.deltas) if d is not None})
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
            self.budget[0] -= max(growth, 0)
            self.kept["weight"] = [stacked[slot[l]] if l in slot else None for l in range(self.L)]
        else:
            self.recompute_weight = True
        return gram

    def _recorded_bytes(self) -> int:
        """Bytes of the inputs and output gradients this module's calls hold."""
        tensors = [t for c in self.calls for t in (c.inp, *c.deltas) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _ghost(self, a_rows: list[Tensor]) -> Tensor:
        G, L, calls = self.G, self.L, self.calls
        out = torch.zeros(G, L, L, dtype=torch.float64, device=self.device)
        a_g = [a.reshape(G, -1, a.shape[-1]) for a in a_rows]
        d_g = [
            [None if d is None else linear_form(c, d).reshape(G, a.shape[1], -1) for d in c.deltas]
            for c, a in zip(calls, a_g)
        ]
        for i in range(len(calls)):
            for j in range(i, len(calls)):
                aa = torch.bmm(a_g[i], a_g[j].transpose(1, 2))
                for a in range(L):
                    for b in range(L):
                        if d_g[i][a] is None or d_g[j][b] is None:
                            continue
                        if i == j and b < a:
                            continue
                        dd = torch.bmm(d_g[i][a], d_g[j][b].transpose(1, 2))
                        v = (aa * dd).sum((1, 2)).double()
                        out[:, a, b] += v
                        if i != j or a != b:
                            out[:, b, a] += v
        return out

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

    def _absorb_embedding(self, index: int, loss: int, delta: Tensor) -> None:
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

    def _embedding_gram(self) -> Tensor:
        G, num = self.G, self.module.num_embeddings
        out = torch.zeros(G, self.L, self.L, dtype=torch.float64, device=self.device)
        if not self._trainable("weight"):
            return out
        uniq, _, per_loss = self._rows
        group_of = uniq // num
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
        self.sparse = (uniq % num, group_of, per_loss)
        return out

    def release(self) -> None:
        """Drop the recorded tensors once the update no longer needs them."""
        for call in self.calls:
            call.inp, call.deltas = None, []

    def _weighted_weight_grad(self, call: Call, w: Tensor) -> Tensor | None:
        """``A^T (sum_l w_l Delta^l)`` of one call, rows weighted by their group's weights."""
        reached = [l for l, d in enumerate(call.deltas) if d is not None]
        if not reached:
            return None
        a = linear_form(call)
        n, t, d_in = a.shape
        rep = w.repeat_interleave(n // self.G, dim=0)  # [N, L]
        deltas = {l: linear_form(call, call.deltas[l]) for l in reached}
        d_out = deltas[reached[0]].shape[-1]
        if len(reached) == 1:
            (l,) = reached
            scale = None if bool((rep[:, l] == 1).all()) else rep[:, l].view(-1, 1, 1)
            delta = deltas[l]
            if scale is not None:  # scale the narrower side
                if d_in < d_out:
                    a = a * scale
                else:
                    delta = delta * scale
            return delta.reshape(-1, d_out).T @ a.reshape(-1, d_in)
        comb = None
        for l in reached:
            term = deltas[l] * rep[:, l].view(-1, 1, 1)
            comb = term if comb is None else comb + term
        return comb.reshape(-1, d_out).T @ a.reshape(-1, d_in)

    def update(self, weights: Tensor) -> dict[str, Tensor]:
        """Parameter gradients ``sum_g sum_l w[g, l] G_g^l`` for loss weights ``[G, L]``."""
        w = weights.float().to(self.device)
        grads: dict[str, Tensor] = {}
        for name, per_loss in self.kept.items():
            total = None
            for l, g in enumerate(per_loss):
                if g is None:
                    continue
                term = torch.tensordot(w[:, l], g, dims=([0], [0]))
                total = term if total is None else total + term
            if total is not None:
                grads[name] = total
        if self.sparse is not None:
            rows, group_of, per_loss = self.sparse
            combined = sum(
                w[group_of, l].unsqueeze(1) * g for l, g in enumerate(per_loss) if g is not None
            )
            weight = self.module.weight
            grads["weight"] = torch.zeros(weight.shape, device=self.device).index_add_(
                0, rows, combined
            )
        if self.recompute_weight:
            total = None
            for call in self.calls:
                g = self._weighted_weight_grad(call, w)
                if g is not None:
                    total = g if total is None else total + g
            if total is not None:
                grads["weight"] = total
        shaped = {}
        for name, g in grads.items():
            p = getattr(self.module, name)
            shaped[name] = g.reshape(p.shape)
        return shaped
