"""``nn.MultiheadAttention`` rebuilt from ``nn.Linear`` projections, so the Linear rule applies.

``nn.MultiheadAttention`` applies its projections through a functional call, which no layer
hook sees: the Harmonizer then recomputes each attention call once and takes one backward
of it per loss. :class:`LinearMultiheadAttention` computes the same function with its
projections as ``nn.Linear`` modules (as Opacus's ``DPMultiheadAttention`` does), whose
per-group gradients come from the recorded inputs and output gradients, nothing recomputed.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._attention import _mask

_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


class LinearMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention``'s forward (same arguments, same outputs) on ``nn.Linear``
    projections: ``in_proj`` (query, key and value stacked, as ``in_proj_weight``) when key
    and value have the query's width, else ``q_proj``, ``k_proj``, ``v_proj``; and
    ``out_proj``.

    Its state_dict names the projections ``in_proj.weight``, ``in_proj.bias`` (or
    ``q_proj.weight``, ...); a state_dict of an ``nn.MultiheadAttention`` loads into it too.
    Self-attention (``query is key is value``) projects once; other calls of ``in_proj``
    keep the columns they need. ``add_bias_kv`` and ``add_zero_attn`` are not supported.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> linear = LinearMultiheadAttention.from_module(mha)
        >>> x = torch.randn(3, 5, 8)
        >>> torch.allclose(linear(x, x, x)[0], mha(x, x, x)[0], atol=1e-6)
        True
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device=None, dtype=None):  # fmt: skip
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be a positive multiple of "
                             f"num_heads ({num_heads})")  # fmt: skip
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.head_dim = embed_dim // num_heads
        self.dropout, self.batch_first = dropout, batch_first
        kw = dict(bias=bias, device=device, dtype=dtype)
        if self.kdim == self.vdim == embed_dim:
            self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, **kw)
        else:
            self.q_proj = nn.Linear(embed_dim, embed_dim, **kw)
            self.k_proj = nn.Linear(self.kdim, embed_dim, **kw)
            self.v_proj = nn.Linear(self.vdim, embed_dim, **kw)
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)
        self.register_load_state_dict_pre_hook(_split_in_proj)

    @classmethod
    def from_module(cls, mha: nn.MultiheadAttention) -> LinearMultiheadAttention:
        """A copy of ``mha`` (weights, ``requires_grad``, training mode, device, dtype)."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("LinearMultiheadAttention does not support add_bias_kv or "
                             "add_zero_attn")  # fmt: skip
        ref = mha.out_proj.weight
        new = cls(mha.embed_dim, mha.num_heads, mha.dropout, mha.in_proj_bias is not None,
                  mha.kdim, mha.vdim, mha.batch_first, ref.device, ref.dtype)  # fmt: skip
        new.load_state_dict(mha.state_dict())
        for name, p in new.named_parameters():
            p.requires_grad_(_source(mha, name).requires_grad)
        return new.train(mha.training)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True needs attn_mask (as in nn.MultiheadAttention)")
        unbatched, kv_same = query.dim() == 2, key is value
        same = query is key and kv_same
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif query.dim() != 3:
            raise ValueError(f"query must be 2-D or 3-D, got shape {tuple(query.shape)}")
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        q, k, v = (t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
                   for t in self._project(query, key, value, same, kv_same))  # fmt: skip
        p = self.dropout if self.training else 0.0
        causal = is_causal and key_padding_mask is None and not need_weights
        if causal:  # as nn.MultiheadAttention: the mask is replaced by the causal hint
            attn_mask = None
        mask = _mask(attn_mask, key_padding_mask, n, self.num_heads, length, source, q.dtype)
        weights = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            weights = (scores if mask is None else scores + mask).softmax(-1)
            weights = F.dropout(weights, p) if p > 0 else weights
            o = weights @ v
            weights = weights.mean(1) if average_attn_weights else weights
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=causal)  # fmt: skip
        out = self.out_proj(o.transpose(1, 2).reshape(n, length, self.embed_dim))
        if unbatched:
            return out.squeeze(0), None if weights is None else weights.squeeze(0)
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def _project(self, query, key, value, same: bool, kv_same: bool) -> tuple:
        if not hasattr(self, "in_proj"):
            return self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if same:
            return self.in_proj(query).chunk(3, -1)
        e = self.embed_dim
        q = self.in_proj(query)[..., :e]
        if kv_same:
            return q, *self.in_proj(key)[..., e:].chunk(2, -1)
        return q, self.in_proj(key)[..., e : 2 * e], self.in_proj(value)[..., 2 * e :]


def convert_multihead_attention(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by an equal
    :class:`LinearMultiheadAttention` (weights copied); returns ``model`` (or the new module
    when ``model`` itself is one).

    The Harmonizer's Linear rule then covers the attention projections with nothing
    recomputed. Convert before building the optimizer: the projections are new parameters,
    named ``...attn.in_proj.weight`` instead of ``...attn.in_proj_weight`` (old state_dicts
    still load). Subclasses of ``nn.MultiheadAttention`` are left as they are.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8))
        >>> model.attn = nn.MultiheadAttention(8, 2)
        >>> model = convert_multihead_attention(model)
        >>> type(model.attn).__name__, [n for n, _ in model.attn.named_children()]
        ('LinearMultiheadAttention', ['in_proj', 'out_proj'])
    """
    if type(model) is nn.MultiheadAttention:
        return LinearMultiheadAttention.from_module(model)
    done: dict[int, nn.Module] = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent._modules.items()):
            if type(child) is not nn.MultiheadAttention:
                continue
            if id(child) not in done:  # a module used in several places stays shared
                try:
                    done[id(child)] = LinearMultiheadAttention.from_module(child)
                except ValueError as e:
                    where = f"{parent_name}.{name}" if parent_name else name
                    raise ValueError(f"cannot convert {where}: {e}") from None
            setattr(parent, name, done[id(child)])
    return model


def _source(mha: nn.MultiheadAttention, name: str) -> Tensor:
    """The parameter of ``mha`` that ``name`` of the converted module is cut from."""
    if name.startswith("out_proj"):
        return mha.get_parameter(name)
    return mha.in_proj_bias if name.endswith("bias") else mha.get_parameter(
        name.replace(".", "_"))


def _split_in_proj(module, state_dict, prefix, *args) -> None:
    """Load ``nn.MultiheadAttention`` names: ``in_proj_weight`` is ``in_proj.weight`` (or
    ``q_proj_weight`` ... are ``q_proj.weight`` ...); ``in_proj_bias`` is cut in three when
    the projections are separate."""
    fused = hasattr(module, "in_proj")
    for name in ("in_proj_weight", "in_proj_bias", *(f"{p}_weight" for p in _PROJECTIONS)):
        value = state_dict.pop(prefix + name, None)
        if value is None:
            continue
        if fused or name != "in_proj_bias":
            dotted = name.replace("_weight", ".weight").replace("_bias", ".bias")
            state_dict[prefix + dotted] = value
        else:
            for proj, part in zip(_PROJECTIONS, value.chunk(3)):
                state_dict[f"{prefix}{proj}.bias"] = part
