"""Per-triplet gradient cosines of the two alignment losses, over a parameter subset or at the
video feature.

**Own-pass gradient.** For a batch loss ``L`` (a mean over triplets, with in-batch negatives)
the gradient splits into one part per triplet: ``g_i = J_i^T dL/dz_i``, the gradient that
flows through triplet ``i``'s own forward pass (``z_i`` = its embeddings, ``J_i`` their
Jacobian). ``sum_i g_i`` is the batch gradient. This is what
``Harmonizer(granularity="sample")`` compares, and what :func:`scoped_cosines` computes for
any subset of parameters: ``cos(g_va_i|S, g_vt_i|S)`` with ``|S`` the restriction to the
parameters ``S``. It needs the model's outputs for one triplet to be independent of the rest
of the batch (eval mode: no DropToken, BatchNorm on running statistics); this is checked.

**Embedding-level cosine** (:func:`embedding_cosines`): ``cos(dL_va/dv_i, dL_vt/dv_i)`` with
``v_i`` the clip's pooled video feature (``video_feat``), the last node both losses share.

Scopes (:func:`scope_parameters`): ``"all"`` (every trainable parameter), ``"shared"`` (the
parameters that both losses reach, found from the autograd graph of a batch) or a module
prefix (``"backbone"``, ``"head.video"``: the parameters whose name starts with it).
"""

from __future__ import annotations

import torch

#: embeddings a CMA loss reads
EMBEDDINGS = ("video_va", "audio_va", "video_vt", "text_vt")


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float64, 0 where a norm is 0 (the Harmonizer's convention)."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    ok = (na > 0) & (nb > 0)
    return torch.where(ok, (a * b).sum(-1) / (na * nb).clamp_min(1e-300), 0.0)


def reached_parameters(model: torch.nn.Module, losses: dict[str, torch.Tensor]
                       ) -> dict[str, set[str]]:
    """Names of the trainable parameters each loss reaches in the autograd graph.

    Example:
        >>> lin = torch.nn.Linear(2, 2); other = torch.nn.Linear(2, 1)
        >>> m = torch.nn.ModuleDict({"a": lin, "b": other})
        >>> x = torch.ones(1, 2)
        >>> r = reached_parameters(m, {"va": lin(x).sum(), "vt": other(lin(x)).sum()})
        >>> sorted(r["va"]), sorted(r["vt"])
        (['a.bias', 'a.weight'], ['a.bias', 'a.weight', 'b.bias', 'b.weight'])
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    for name, loss in losses.items():
        grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True,
                                    allow_unused=True)
        out[name] = {n for (n, _), g in zip(named, grads) if g is not None}
    return out


def scope_parameters(model: torch.nn.Module, scope: str,
                     reached: dict[str, set[str]] | None = None) -> list[str]:
    """Names of the parameters a ``scope`` selects (see the module docstring).

    ``reached`` (from :func:`reached_parameters`) is needed for ``"shared"``. A prefix that
    matches no trainable parameter is a ``ValueError`` naming ``--scope``.

    Example:
        >>> m = torch.nn.ModuleDict({"head": torch.nn.Linear(2, 2)})
        >>> scope_parameters(m, "head")
        ['head.weight', 'head.bias']
        >>> scope_parameters(m, "tail")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --scope 'tail' matches no trainable parameter (scopes: all, shared or ...
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if scope == "all":
        return names
    if scope == "shared":
        if reached is None:
            raise ValueError("scope 'shared' needs the parameters each loss reaches")
        both = set.intersection(*reached.values()) if reached else set()
        chosen = [n for n in names if n in both]
        if not chosen:
            raise ValueError("--scope shared: no trainable parameter is reached by both losses")
        return chosen
    prefix = scope.rstrip(".")
    chosen = [n for n in names if n == prefix or n.startswith(prefix + ".")]
    if not chosen:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"--scope {scope!r} matches no trainable parameter (scopes: all, "
                         f"shared or a module prefix such as {', '.join(repr(t) for t in tops)})")
    return chosen


def _row(batch: dict, i: int) -> dict:
    return {k: (v[i:i + 1] if torch.is_tensor(v) else v) for k, v in batch.items()}


def scoped_cosines(model: torch.nn.Module, batch: dict, out: dict[str, torch.Tensor],
                   losses: dict[str, torch.Tensor], names: list[str],
                   atol: float = 1e-4) -> torch.Tensor:
    """``[B]`` cosines of the own-pass gradients of ``losses["va"]`` and ``losses["vt"]``
    restricted to the parameters ``names``.

    ``out`` is the model's output on ``batch`` and ``losses`` the batch losses computed from
    it (their graph must still exist). Triplet ``i``'s own-pass gradient is obtained exactly
    by a forward pass of triplet ``i`` alone, contracted with ``dL/dz_i`` of the batch; the
    single-triplet embeddings must equal the batch's (within ``atol``), otherwise the model
    mixes triplets (training-mode BatchNorm, DropToken) and a ``RuntimeError`` is raised.

    Example:
        >>> from gradharmony.losses import nce
        >>> lin = torch.nn.Linear(3, 3)
        >>> m = torch.nn.ModuleDict({"v": lin})
        >>> b = {"x": torch.randn(4, 3)}
        >>> def fwd(batch):
        ...     z = lin(batch["x"])
        ...     return {"video_va": z, "audio_va": batch["x"], "video_vt": z,
        ...             "text_vt": batch["x"][:, None]}
        >>> out = fwd(b)
        >>> losses = {"va": nce(out["video_va"], out["audio_va"]),
        ...           "vt": nce(out["video_vt"], out["text_vt"][:, 0])}
        >>> m.forward = fwd
        >>> scoped_cosines(m, b, out, losses, ["v.weight", "v.bias"]).shape
        torch.Size([4])
    """
    params = dict(model.named_parameters())
    chosen = [params[n] for n in names]
    embs = [e for e in EMBEDDINGS if e in out and out[e].requires_grad]
    dz = {}
    for name in ("va", "vt"):
        g = torch.autograd.grad(losses[name], [out[e] for e in embs], retain_graph=True,
                                allow_unused=True)
        dz[name] = {e: gi.detach() for e, gi in zip(embs, g) if gi is not None}
    B = out["video_va"].shape[0]
    cos = torch.empty(B, dtype=torch.float64)
    for i in range(B):
        one = model(_row(batch, i))
        for e in embs:
            if not torch.allclose(one[e].float(), out[e][i:i + 1].detach().float(), atol=atol,
                                  rtol=1e-3):
                raise RuntimeError(
                    f"triplet {i}'s embedding {e} differs when it is encoded alone: the model "
                    "mixes triplets (put it in eval mode: no DropToken, BatchNorm on running "
                    "statistics); per-triplet gradients would be wrong")
        flat = {}
        for name in ("va", "vt"):
            terms = [(one[e].float() * dz[name][e][i:i + 1].float()).sum()
                     for e in embs if e in dz[name]]
            if not terms:
                flat[name] = torch.zeros(sum(p.numel() for p in chosen), dtype=torch.float64)
                continue
            g = torch.autograd.grad(torch.stack(terms).sum(), chosen, retain_graph=True,
                                    allow_unused=True)
            flat[name] = torch.cat([(gi if gi is not None else torch.zeros_like(p))
                                    .reshape(-1).double() for gi, p in zip(g, chosen)])
        cos[i] = _cos(flat["va"][None], flat["vt"][None])[0]
    return cos


def embedding_cosines(out: dict[str, torch.Tensor], losses: dict[str, torch.Tensor],
                      feature: str = "video_feat") -> torch.Tensor:
    """``[B]`` cosines ``cos(dL_va/dv_i, dL_vt/dv_i)`` at the video feature ``v = out[feature]``
    (one autograd pass per loss; the graph is kept).

    Example:
        >>> v = torch.randn(3, 2, requires_grad=True)
        >>> out = {"video_feat": v}
        >>> losses = {"va": (v ** 2).sum(), "vt": -(v ** 2).sum()}
        >>> embedding_cosines(out, losses).round(decimals=6).tolist()
        [-1.0, -1.0, -1.0]
    """
    if feature not in out or not out[feature].requires_grad:
        raise ValueError(f"the model output has no differentiable {feature!r}: the "
                         "embedding-level cosine needs the pooled video feature")
    v = out[feature]
    g = {name: torch.autograd.grad(losses[name], v, retain_graph=True, allow_unused=True)[0]
         for name in ("va", "vt")}
    g = {n: (x if x is not None else torch.zeros_like(v)) for n, x in g.items()}
    return _cos(g["va"].reshape(v.shape[0], -1), g["vt"].reshape(v.shape[0], -1))
