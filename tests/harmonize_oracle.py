"""A brute-force per-group oracle for any model whose outputs keep the batch on dim 0.

Group g's gradient of loss l is the backward of the model outputs with the upstream gradient
``d loss_l / d outputs`` masked to the group's rows: one backward per (group, loss). Scalar
parameters and those named loss-level are left out of the per-group vectors and get the
weighted plain gradient, as the Harmonizer defines them.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from gradharmony.harmonize import Harmonizer, realign


def oracle(model, run, loss_fn, groups, loss_level=()):
    """Per-group per-loss gradients ``[G, L, P]`` of the per-triplet parameters, the plain
    per-loss gradients ``[L, P_all]``, and the parameter split ``(per_triplet, level)``.

    The upstream gradients are the *partial* derivatives of the losses at the outputs (the
    losses evaluated on detached copies), so an output computed from another one (BERT's
    pooler output from its last hidden state) is not counted twice.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    level = [p for p in params if p.dim() == 0 or any(p is q for q in loss_level)]
    inner = [p for p in params if all(p is not q for q in level)]
    out = run()
    leaves, spec = tree_flatten(out)
    batched = [i for i, t in enumerate(leaves)
               if isinstance(t, torch.Tensor) and t.requires_grad and t.dim() > 0]  # fmt: skip
    copies = list(leaves)
    for i in batched:
        copies[i] = leaves[i].detach().requires_grad_()
    outs = [leaves[i] for i in batched]
    cut = loss_fn(tree_unflatten(copies, spec))
    losses = list(loss_fn(out).values())
    per = torch.zeros(groups, len(losses), sum(p.numel() for p in inner), dtype=torch.float64)
    plain = []
    for l, (loss, partial) in enumerate(zip(losses, cut.values())):
        full = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        plain.append(_flat(params, full))
        up = torch.autograd.grad(partial, [copies[i] for i in batched], retain_graph=True,
                                 allow_unused=True)  # fmt: skip
        for g in range(groups):
            masked = []
            for u, o in zip(up, outs):
                u = torch.zeros_like(o) if u is None else u.clone()
                rows = o.shape[0] // groups
                keep = torch.zeros(o.shape[0], dtype=torch.bool)
                keep[g * rows : (g + 1) * rows] = True
                u[~keep] = 0
                masked.append(u)
            grads = torch.autograd.grad(outs, inner, masked, retain_graph=True,
                                        allow_unused=True)  # fmt: skip
            per[g, l] = _flat(inner, grads)
    return per, torch.stack(plain), (inner, level)


def _flat(params, grads):
    return torch.cat([
        (torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)
    ]).double()  # fmt: skip


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def expected_update(method, per, plain_level, gamma):
    """The harmonized update of the per-triplet parameters and the loss-level ones."""
    va, vt = per[:, 0], per[:, 1]
    cos = _cos(va, vt)
    w = torch.ones(per.shape[0], 2, dtype=torch.float64)
    n = (va * vt).sum(-1).clamp_max(0)
    gr = torch.stack([1 - n / (va * va).sum(-1), 1 - n / (vt * vt).sum(-1)], 1)
    if method == "gr":
        w = gr
    elif method == "both":
        kept = cos > gamma
        w = torch.where(((cos < 0) & kept).unsqueeze(1), gr, w) * kept.unsqueeze(1)
    inner = (w.unsqueeze(2) * per).sum((0, 1))
    level = (w.mean(0).unsqueeze(1) * plain_level).sum(0)
    if method == "gr":
        assert torch.allclose(inner, sum(realign(va, vt)).sum(0), atol=1e-9 * inner.abs().max())
    return inner, level


def harmonized_grads(model, run, loss_fn, params, **kwargs):
    harm = Harmonizer(model, **kwargs)
    model.zero_grad(set_to_none=True)
    try:
        stats = harm.backward(loss_fn(run()))
    finally:
        harm.remove()
    return stats, _flat(params, [p.grad for p in params])


def check_model(model, run, loss_fn, batch, granularities=("sample", 2, "batch"),
                methods=("gr", "both"), loss_level=(), rtol=1e-5, **kwargs):  # fmt: skip
    """Cosines, norms and updates of the Harmonizer against the oracle; the baseline update
    against one plain backward of the summed losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    model.zero_grad(set_to_none=True)
    sum(loss_fn(run()).values()).backward()
    plain_sum = _flat(params, [p.grad for p in params])
    _, got = harmonized_grads(model, run, loss_fn, params, method="baseline",
                              granularity="sample", **kwargs)  # fmt: skip
    _assert_close(got, plain_sum, rtol, names, params, "baseline")
    for granularity in granularities:
        groups = 1 if granularity == "batch" else batch // (1 if granularity == "sample"
                                                            else granularity)  # fmt: skip
        at_batch = granularity == "batch"
        per, plain, (inner, level) = oracle(model, run, loss_fn, groups,
                                            () if at_batch else loss_level)  # fmt: skip
        if at_batch:
            per = plain.unsqueeze(0)
            inner, level = params, []
        cos = _cos(per[:, 0], per[:, 1])
        gamma = float(cos.sort().values[:2].mean()) if len(cos) > 1 else -0.99
        for method in methods:
            stats, got = harmonized_grads(model, run, loss_fn, params, method=method,
                                          granularity=granularity, gamma=gamma,
                                          **kwargs)  # fmt: skip
            torch.testing.assert_close(stats.cos.double(), cos, rtol=rtol, atol=rtol)
            lvl_idx = _index(params, level)
            want_inner, want_level = expected_update(method, per, plain[:, lvl_idx], gamma)
            want = torch.zeros_like(got)
            want[_index(params, inner)] = want_inner
            want[lvl_idx] = want_level
            _assert_close(got, want, rtol, names, params, f"{method}/{granularity}")


def _index(params, subset):
    idx, start = [], 0
    for p in params:
        if any(p is q for q in subset):
            idx.extend(range(start, start + p.numel()))
        start += p.numel()
    return torch.tensor(idx, dtype=torch.long)


def _assert_close(got, want, rtol, names, params, what):
    scale = float(want.abs().max())
    err = (got - want).abs()
    if float(err.max()) > rtol * scale + 1e-12:
        start, bad = 0, []
        for n, p in zip(names, params):
            e = float(err[start : start + p.numel()].max()) if p.numel() else 0.0
            if e > rtol * scale:
                bad.append((n, e))
            start += p.numel()
        raise AssertionError(f"{what}: max error {float(err.max()):.3g} (scale {scale:.3g}) "
                             f"in {bad[:8]}")  # fmt: skip
