"""Layer rules (conv variants, norms, embeddings), BatchNorm's layer-by-layer definition,
bf16 autocast, checkpointing, L > 2, and bad input leaving p.grad untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from gradharmony.harmonize import Harmonizer, gram_cosine, pcgrad_weights
from tests.harmonize_oracle import check_model
from tests.test_harmonize_helpers import (
    TinyTriModal,
    flat_grad,
    losses_of,
    make_batch,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _three_losses(y):
    s = y @ y.T  # couples the rows, like in-batch negatives
    return {
        "va": (y[:, 0] - 1).pow(2).mean() + s.logsumexp(1).mean(),
        "vt": y[:, 1:].sin().sum() - 0.3 * s.diagonal().mean(),
        "at": (y * y.flip(0)).mean(),
    }


def _mask_oracle(model, x, losses_fn, groups):
    """[G, L, P] by masking the upstream gradient at the model output to each group's rows."""
    params = [p for p in model.parameters() if p.requires_grad]
    y = model(x)
    losses = losses_fn(y)
    size = y.shape[0] // groups
    out = torch.zeros(groups, len(losses), sum(p.numel() for p in params), dtype=torch.float64)
    for l, loss in enumerate(losses.values()):
        up = torch.autograd.grad(loss, y, retain_graph=True)[0]
        for g in range(groups):
            m = torch.zeros_like(up)
            m[g * size : (g + 1) * size] = up[g * size : (g + 1) * size]
            gr = torch.autograd.grad(y, params, m, retain_graph=True, allow_unused=True)
            out[g, l] = torch.cat([
                (torch.zeros_like(p) if t is None else t).reshape(-1) for p, t in zip(params, gr)
            ]).double()  # fmt: skip
    return out


class ConvZoo(nn.Module):
    """Conv1d with reflect padding and dilation, Conv2d 'same', Conv3d patches, a frozen
    layer, bias-free Linear and LayerNorm, BatchNorm1d in eval mode."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(2, 3, kernel_size=3, padding=2, dilation=2, padding_mode="reflect")
        self.c2 = nn.Conv2d(3, 4, kernel_size=3, padding="same", stride=1)
        self.c3 = nn.Conv3d(4, 5, kernel_size=(1, 2, 2), stride=(1, 2, 2), bias=False)
        self.bn = nn.BatchNorm1d(5).eval()
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.ln = nn.LayerNorm(5, bias=False)
        self.out = nn.Linear(5, 3, bias=False)

    def forward(self, x):  # x: [B, 2, 16]
        h = self.c1(x)  # [B, 3, 16]
        h = self.c2(h.view(-1, 3, 4, 4))  # [B, 4, 4, 4]
        h = self.c3(h.unsqueeze(2).expand(-1, -1, 2, -1, -1))  # [B, 5, 2, 2, 2]
        h = self.bn(h.flatten(2)).transpose(1, 2)  # [B, 8, 5]
        return self.out(self.ln(F.gelu(self.frozen(h)))).mean(1)


@pytest.mark.parametrize("strategy", ["ghost", "materialize"])
def test_conv_variants_frozen_layers_and_three_losses(strategy):
    model = ConvZoo()
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2)
        model.bn.weight.normal_()
    x = torch.randn(4, 2, 16)
    oracle = _mask_oracle(model, x, _three_losses, groups=4)
    harm = Harmonizer(model, method="gr", granularity="sample", strategy=strategy, seed=5)
    model.zero_grad(set_to_none=True)
    stats = harm.backward(_three_losses(model(x)))
    gram = oracle @ oracle.transpose(1, 2)
    torch.testing.assert_close(stats.gram, gram, rtol=1e-5, atol=1e-7 * gram.abs().max())
    cos = gram_cosine(gram)
    off = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(stats.cos.double(), cos[:, off].min(1).values, rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    weights = pcgrad_weights(gram, torch.Generator().manual_seed(5))
    expected = torch.einsum("gl,glp->p", weights, oracle)
    got = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1)
                     for p in model.parameters() if p.requires_grad]).double()  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max())
    assert model.frozen.weight.grad is None


@pytest.mark.parametrize("norm", [nn.BatchNorm1d, nn.SyncBatchNorm])
def test_batchnorm_layer_by_layer_definition(norm):
    """Training-mode BatchNorm mixes rows; the per-sample gradients are defined layer by layer:
    each layer's rows of its input (x_hat for BN) times the gradient at its output."""
    torch.manual_seed(0)
    lin1, bn, lin2 = nn.Linear(5, 6), norm(6), nn.Linear(6, 3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
    model = nn.Sequential(lin1, bn, nn.ReLU(), lin2)
    x = torch.randn(8, 5)

    def losses(y):
        return {"va": (y @ y.T).logsumexp(1).mean(), "vt": (y[:, 0] - y[:, 2]).pow(2).mean()}

    # oracle: explicit per-sample formulas from the full-batch output gradients
    h1 = lin1(x)
    h2 = bn(h1)
    h3 = lin2(h2.relu())
    per = []
    xhat = (h1 - h1.mean(0)) / (h1.var(0, unbiased=False) + bn.eps).sqrt()
    for loss in losses(h3).values():
        d1, d2, d3 = torch.autograd.grad(loss, [h1, h2, h3], retain_graph=True)
        rows = [
            torch.einsum("no,ni->noi", d1, x).flatten(1), d1,
            xhat * d2, d2,
            torch.einsum("no,ni->noi", d3, h2.relu()).flatten(1), d3,
        ]  # fmt: skip
        per.append(torch.cat(rows, 1).detach().double())
    oracle = torch.stack(per, 1)  # [B, L, P]
    full = torch.autograd.grad(sum(losses(model(x)).values()), list(model.parameters()))
    torch.testing.assert_close(oracle.sum((0, 1)).float(),
                               torch.cat([g.reshape(-1) for g in full]), rtol=1e-5, atol=1e-6)

    gram = oracle @ oracle.transpose(1, 2)
    cos = gram_cosine(gram)[:, 0, 1]
    low = cos.sort().values
    gamma = float(low[:2].mean())
    harm = Harmonizer(model, method="both", granularity="sample", gamma=gamma)
    model.zero_grad(set_to_none=True)
    stats = harm.backward(losses(model(x)))
    torch.testing.assert_close(stats.gram, gram, rtol=1e-5, atol=1e-7 * gram.abs().max())
    kept, proj = cos > gamma, (cos > gamma) & (cos < 0)
    assert kept.any() and (~kept).any() and proj.any()  # every branch of Both is exercised
    n = gram[:, 0, 1].clamp_max(0)
    w = torch.stack([1 - n / gram[:, 0, 0], 1 - n / gram[:, 1, 1]], 1)
    w = torch.where(proj.unsqueeze(1), w, 1.0) * kept.unsqueeze(1)
    expected = torch.einsum("gl,glp->p", w, oracle)
    torch.testing.assert_close(flat_grad(model).double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max())  # fmt: skip


def _tiny():
    torch.manual_seed(0)
    return TinyTriModal(), make_batch(b=4)


def test_bf16_autocast_runs_and_is_close():
    model, batch = _tiny()
    harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.5)
    ref = harm.backward(losses_of(model(**batch)))
    g_ref = flat_grad(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch)
    stats = harm.backward(losses_of({k: v.float() for k, v in out.items()}))
    assert stats.gram.dtype == torch.float64 and torch.isfinite(stats.gram).all()
    assert (stats.cos - ref.cos).abs().max() < 0.1
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert (flat_grad(model) - g_ref).norm() < 0.1 * g_ref.norm()


def test_nonreentrant_checkpointing_matches_and_reentrant_raises():
    model, batch = _tiny()
    harm = Harmonizer(model, method="gr", granularity="sample")
    harm.backward(losses_of(model(**batch)))
    expected = flat_grad(model)
    model.zero_grad(set_to_none=True)
    blocks = model.blocks
    plain = blocks[0].forward

    def wrapped(x, reentrant):
        return checkpoint(plain, x, use_reentrant=reentrant)

    blocks[0].forward = lambda x: wrapped(x, False)
    harm.backward(losses_of(model(**batch)))
    torch.testing.assert_close(flat_grad(model), expected, rtol=1e-5, atol=1e-7)
    blocks[0].forward = lambda x: wrapped(x, True)
    model.zero_grad(set_to_none=True)
    with pytest.raises(RuntimeError, match="reentrant"):
        harm.backward(losses_of(model(**batch)))
    assert all(p.grad is None for p in model.parameters())


def test_no_grad_forwards_record_nothing_and_reset_clears():
    model, batch = _tiny()
    harm = Harmonizer(model, method="gr", granularity="sample")
    with torch.no_grad():
        model(**batch)
    losses = losses_of(model(**batch))
    harm.reset()
    with pytest.raises(RuntimeError, match="no forward pass"):
        harm.backward(losses)
    with torch.no_grad():
        model(**batch)
    harm.backward(losses_of(model(**batch)))  # only the grad-enabled forward counts
    expected = flat_grad(model)
    model.zero_grad(set_to_none=True)
    harm.backward(losses_of(model(**batch)))
    torch.testing.assert_close(flat_grad(model), expected)


def test_all_dropped_leaves_zero_grads():
    model, batch = _tiny()
    harm = Harmonizer(model, method="cl", granularity=2, gamma=1.0)
    stats = harm.backward(losses_of(model(**batch)))
    assert stats.all_dropped and not stats.kept.any()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_cos_and_decisions_invariant_to_loss_scaling_and_order():
    model, batch = _tiny()
    harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.1)
    s1 = harm.backward(losses_of(model(**batch)))
    g1 = flat_grad(model)
    model.zero_grad(set_to_none=True)
    losses = losses_of(model(**batch))
    s2 = harm.backward({"vt": 7.0 * losses["vt"], "va": 0.01 * losses["va"]})
    torch.testing.assert_close(s2.cos, s1.cos, rtol=1e-4, atol=1e-6)
    assert torch.equal(s2.kept, s1.kept) and torch.equal(s2.projected, s1.projected)
    model.zero_grad(set_to_none=True)
    losses = losses_of(model(**batch))
    harm.backward({"vt": losses["vt"], "va": losses["va"]})
    torch.testing.assert_close(flat_grad(model), g1, rtol=1e-5, atol=1e-7)


# -- bad input ------------------------------------------------------------------------------


def test_construction_rejects_unsupported_options_naming_every_offender():
    model = nn.ModuleDict({
        "a": nn.Embedding(5, 3, sparse=True), "b": nn.Embedding(5, 3),
        "c": nn.Embedding(5, 3, scale_grad_by_freq=True),
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"\['a', 'c'\]"):
        Harmonizer(model, method="gr")
    lin = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown method"):
        Harmonizer(lin, method="pcgrad")
    for bad in ("all", 0, -2, 1.5, True):
        with pytest.raises(ValueError, match="granularity"):
            Harmonizer(lin, method="gr", granularity=bad)
    with pytest.raises(ValueError, match="total_steps"):
        Harmonizer(lin, method="both", gamma=(-0.3, 0.0))


def _bad_cases(model, batch):
    def run(harm, make):
        return harm.backward(make())

    out = lambda: model(**batch)  # noqa: E731
    other = torch.ones(2, requires_grad=True)
    return {
        "non-scalar": (lambda: {"va": out()["video_va"].sum(1), "vt": losses_of(out())["vt"]},
                       ValueError, "scalar"),
        "non-finite": (lambda: {"va": losses_of(out())["va"] * float("nan"),
                                "vt": losses_of(out())["vt"]}, ValueError, "finite"),
        "independent": (lambda: {"va": (other * 2).sum(), "vt": losses_of(out())["vt"]},
                        RuntimeError, "does not depend"),
        "zero-gradient": (lambda: {"va": 0 * losses_of(out())["va"],
                                   "vt": losses_of(out())["vt"]}, RuntimeError, "zero gradient"),
        "one-loss": (lambda: {"va": losses_of(out())["va"]}, ValueError, "at least 2"),
    }, run  # fmt: skip


@pytest.mark.parametrize("granularity", ["batch", "sample"])
def test_bad_input_leaves_grads_untouched(granularity):
    model, batch = _tiny()
    sentinel = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    harm = Harmonizer(model, method="both", granularity=granularity, gamma=-0.3)
    cases, run = _bad_cases(model, batch)
    for name, (make, err, pattern) in cases.items():
        with pytest.raises(err, match=pattern):
            run(harm, make)
        for p, s in zip(model.parameters(), sentinel):
            assert torch.equal(p.grad, s), name
    harm3 = Harmonizer(model, method="gr", granularity=3)
    harm.remove()
    with pytest.raises(ValueError, match="does not divide"):
        harm3.backward(losses_of(model(**batch)))
    for p, s in zip(model.parameters(), sentinel):
        assert torch.equal(p.grad, s)


def test_baseline_without_measure_is_plain_backward():
    model, batch = _tiny()
    loss = sum(losses_of(model(**batch)).values())
    expected = torch.autograd.grad(loss, list(model.parameters()))
    harm = Harmonizer(model, method="baseline", measure=False)
    stats = harm.backward(losses_of(model(**batch)))
    assert stats.cos.numel() == 0 and not stats.all_dropped
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


def test_unbatched_calls_and_row_counts_are_rejected():
    lin = nn.Linear(3, 2)
    harm = Harmonizer(lin, method="gr")
    with pytest.raises(RuntimeError, match="batch dimension"):
        lin(torch.randn(3))
    harm.remove()



class _Queries(nn.Module):
    """Learned queries from a batch-free table, expanded or kept per triplet."""

    def __init__(self, batched: bool):
        super().__init__()
        self.batched = batched
        self.query, self.lin = nn.Linear(3, 4), nn.Linear(4, 2)
        self.register_buffer("seed", torch.randn(2, 3))

    def forward(self, x):  # x: [B, 2, 4]
        b = x.shape[0]
        if self.batched:  # the triplet on dim 0 of every call: fine
            q = self.query(self.seed.expand(b, 2, 3))
        else:
            q = self.query(self.seed[:1]).expand(b, 2, 4)  # dim 0 of size 1 spread over B
        return self.lin(x * q + q[:, :1]).sum(1)


@pytest.mark.parametrize("batched", [True, False])
def test_expanded_batch_free_outputs_are_attributed_where_they_land(batched):
    model = _Queries(batched)
    x = torch.randn(4, 2, 4)

    def losses(y):
        return {"va": y[:, 0].sum(), "vt": y[:, 1].pow(2).sum()}

    check_model(model, lambda: model(x), losses, batch=4)
