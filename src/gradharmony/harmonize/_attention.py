"""``nn.MultiheadAttention``: its projections' per-group gradients from one recomputation.

The module's forward uses ``in_proj`` and ``out_proj`` through a functional call, so no
layer hook sees them. The rule recomputes the attention from the recorded query, key and
value (batch first), takes one backward of the loss's output gradient through it, and
forms each projection's per-group gradient as ``Delta^T A`` over the group's rows, like a
Linear layer. Configurations it does not cover (``add_bias_kv``, ``add_zero_attn``,
separate key/value widths) take the generic ``vmap`` rule.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._generic import GenericWork
from ._layers import _stacked_gram
from ._rules import register_rule


@register_rule(nn.MultiheadAttention)
class AttentionWork(GenericWork):
    """Per-group gradients of ``in_proj_weight/bias`` and ``out_proj.weight/bias``; the
    batch is on dim 1 unless ``batch_first``; a 2-D ``attn_mask`` is shared by all rows,
    a 3-D one has ``N * num_heads`` rows."""

    @staticmethod
    def input_dims(module: nn.Module, args: tuple, kwargs: dict) -> tuple[list, int]:
        from torch.utils._pytree import tree_flatten

        bound = inspect.signature(module.forward).bind(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        query = bound.arguments["query"]
        if query.dim() != 3:
            raise ValueError("nn.MultiheadAttention needs a batched (3-D) query")
        batch = 0 if module.batch_first else 1
        by_id = {}
        for name, value in bound.arguments.items():
            if not isinstance(value, Tensor):
                continue
            if name in ("query", "key", "value"):
                by_id[id(value)] = batch
            elif name == "key_padding_mask" or (name == "attn_mask" and value.dim() == 3):
                by_id.setdefault(id(value), 0)
        dims = [by_id.get(id(t)) if isinstance(t, Tensor) else None for t in leaves]
        return dims, query.shape[batch]

    @staticmethod
    def output_dim(module: nn.Module, index: int) -> int:
        return (0 if module.batch_first else 1) if index == 0 else 0

    def _direct(self) -> bool:
        m = self.module
        return m._qkv_same_embed_dim and m.bias_k is None and not m.add_zero_attn

    def absorb(self, index: int, loss: int, delta: Tensor, slot: int = 0) -> None:
        if slot != 0 or not self._direct() or self.dense_names:
            return super().absorb(index, loss, delta, slot)
        self.reached = True
        self.recompute_weight = True  # keep the rows: the update is recomputed from them
        m, call = self.module, self.calls[index]
        if m.training and m.dropout > 0:
            raise RuntimeError("attention dropout > 0 cannot be replayed; set dropout=0")
        if not hasattr(self, "_cache"):
            self._cache, self._rows = {}, {}
        if index not in self._cache:  # one recomputation serves every loss
            self._cache[index] = self._recompute(call)
        inputs, proj, o = self._cache[index]
        if not m.batch_first:
            delta = delta.transpose(0, 1)
        d_o = delta.to(o.dtype) @ m.out_proj.weight.detach()
        with torch.enable_grad():
            d_proj = torch.autograd.grad(o, proj, d_o, retain_graph=True)
        rows = self._rows.setdefault(index, ([*inputs, o.detach()], [None] * self.L))
        rows[1][loss] = [*d_proj, delta]

    def finish(self, index: int) -> None:
        getattr(self, "_cache", {}).pop(index, None)

    def _blocks(self):
        """Per parameter slice: (name, rows) with rows ``[(A, [Delta per loss])]`` per call;
        the three in_proj blocks (q, k, v) and out_proj."""
        covers = self.calls[0].covers
        for b, (w, bias) in enumerate([("in_proj_weight", "in_proj_bias")] * 3
                                      + [("out_proj.weight", "out_proj.bias")]):  # fmt: skip
            calls = [(inputs[b], [None if d is None else d[b] for d in deltas])
                     for inputs, deltas in self._rows.values()]  # fmt: skip
            yield b, w if w in covers else None, bias if bias in covers else None, calls

    def gram(self) -> Tensor:
        if not getattr(self, "_rows", None):
            return super().gram()
        G, L = self.G, self.L
        out = torch.zeros(G, L, L, dtype=torch.float64, device=self.device)
        for _, w, bias, calls in self._blocks():
            for name, grouped in ((w, _per_group), (bias, _bias_per_group)):
                if name is None:
                    continue
                per_loss = [None] * L
                for a, deltas in calls:  # every call of the module: cross-call terms
                    for l, d in enumerate(deltas):
                        if d is not None:
                            g = grouped(a, d, G)
                            per_loss[l] = g if per_loss[l] is None else per_loss[l] + g
                reached = [l for l in range(L) if per_loss[l] is not None]
                if reached:
                    stacked = torch.stack([per_loss[l].reshape(G, -1) for l in reached])
                    out += _stacked_gram(stacked, reached, L)
        return out

    def update(self, weights: Tensor) -> dict[str, Tensor]:
        if not getattr(self, "_rows", None):
            return super().update(weights)
        w = weights.float().to(self.device)
        parts: dict[str, list] = {}
        for _, wname, bname, calls in self._blocks():
            total_w = total_b = None
            for a, deltas in calls:
                comb = None
                for l, d in enumerate(deltas):
                    if d is not None:
                        rep = w[:, l].repeat_interleave(d.shape[0] // self.G)
                        term = d.float() * rep.view(-1, *[1] * (d.dim() - 1))
                        comb = term if comb is None else comb + term
                if comb is None:
                    continue
                gw = comb.reshape(-1, comb.shape[-1]).T @ a.float().reshape(-1, a.shape[-1])
                gb = comb.reshape(-1, comb.shape[-1]).sum(0)
                total_w = gw if total_w is None else total_w + gw
                total_b = gb if total_b is None else total_b + gb
            for name, g in ((wname, total_w), (bname, total_b)):
                if name is not None and g is not None:
                    parts.setdefault(name, []).append(g)
        return {name: torch.cat(gs, 0) for name, gs in parts.items()}

    def release(self) -> None:
        super().release()
        self._rows = {}

    def _recompute(self, call):
        """Batch-first query/key/value, their projections (leaves) and the attention output
        before ``out_proj`` (with its graph); checks the recomputed output."""
        m = self.module
        got = inspect.signature(m.forward).bind(*call.args, **call.kwargs).arguments
        q, k, v = got["query"], got["key"], got["value"]
        if not m.batch_first:
            q, k, v = (t.transpose(0, 1) for t in (q, k, v))
        n, length, e = q.shape
        w, b = m.in_proj_weight.detach(), m.in_proj_bias
        bias = [None] * 3 if b is None else b.detach().chunk(3)
        with torch.enable_grad():
            proj = [F.linear(x, wi, bi).detach().requires_grad_()
                    for x, wi, bi in zip((q, k, v), w.chunk(3), bias)]  # fmt: skip
            heads = [t.unflatten(-1, (m.num_heads, -1)).transpose(1, 2) for t in proj]
            mask = _mask(got.get("attn_mask"), got.get("key_padding_mask"), n, m.num_heads,
                         length, k.shape[1], q.dtype)  # fmt: skip
            o = F.scaled_dot_product_attention(*heads, attn_mask=mask)
            o = o.transpose(1, 2).reshape(n, length, e)
        if call.check is not None:
            y = F.linear(o.detach(), m.out_proj.weight.detach(), _opt(m.out_proj.bias))
            self._check_rows(y, call.check)
        return (q, k, v), proj, o



def _bias_per_group(x: Tensor, d: Tensor, groups: int) -> Tensor:
    """``[G, out]``: each group's ``sum_rows d``."""
    return d.float().reshape(groups, -1, d.shape[-1]).sum(1)


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


def _per_group(x: Tensor, d: Tensor, groups: int) -> Tensor:
    """``[G, out, in]``: each group's ``sum_rows d^T x``."""
    x = x.float().reshape(groups, -1, x.shape[-1])
    d = d.float().reshape(groups, -1, d.shape[-1])
    return torch.bmm(d.transpose(1, 2), x)


def _mask(attn_mask, padding, n, heads, length, source, dtype) -> Tensor | None:
    """The additive float mask ``[N or 1, H or 1, L, S]`` nn.MultiheadAttention applies."""

    def additive(m):
        if m.dtype == torch.bool:
            return torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill(m, float("-inf"))
        return m.to(dtype)

    out = None
    if attn_mask is not None:
        out = additive(attn_mask)
        out = out.view(1, 1, length, source) if out.dim() == 2 else out.view(n, heads, length,
                                                                             source)
    if padding is not None:
        pad = additive(padding).view(n, 1, 1, source)
        out = pad if out is None else out + pad
    return out
