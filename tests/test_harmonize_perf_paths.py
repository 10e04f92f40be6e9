"""The fast paths of the engine against the brute-force oracle, each checked to be taken:
landings that only broadcast their batch-free inputs (summed per group instead of a masked
batched backward), and the ghost Gramian of one Linear called on passes that different
losses reach (the product taken on the side fewer losses reach, the bias riding along)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradharmony.harmonize import Harmonizer, _graph, _layers
from tests.harmonize_oracle import check_model

pytestmark = pytest.mark.usefixtures("one_thread")


def two_losses(y):
    """Two losses on a [B, k] output, with in-batch coupling like contrastive losses."""
    s = y @ y.T
    return {"va": (y[:, 0] - 1).pow(2).mean() + s.logsumexp(1).mean(),
            "vt": y[:, 1:].sin().sum() - 0.3 * s.diagonal().mean()}  # fmt: skip


def _perturbed(model):
    torch.manual_seed(1)
    with torch.no_grad():  # make the random init less symmetric
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


class Broadcasts(nn.Module):
    """Batch-free tables meeting the batch through every summing landing: an add with alpha,
    a subtraction with the table on either side, an expanded token behind a view, and a
    table sliced before it is added (a chain between the landing and the parameter)."""

    def __init__(self, dim=6, tokens=3):
        super().__init__()
        self.inp = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.randn(dim))
        self.pos = nn.Parameter(torch.randn(tokens + 1, dim))
        self.shift = nn.Parameter(torch.randn(1, dim))
        self.long = nn.Parameter(torch.randn(tokens + 5, dim))
        self.out = nn.Linear(dim, 3)

    def forward(self, x):  # [B, tokens, 4]
        h = self.inp(x)
        h = torch.cat([self.cls.view(1, 1, -1).expand(h.shape[0], 1, -1), h], 1)
        h = torch.add(h, self.pos, alpha=-1.5)
        h = self.shift - h.tanh()
        h = h.sub(self.long[: h.shape[1]], alpha=0.5)
        return self.out(h.tanh().mean(1))


def test_broadcast_landings_are_summed_per_group_and_match_the_oracle(monkeypatch):
    summed = []
    original = _graph.Landings._pull_summed

    def spy(self, node, loss, delta, slots):
        summed.append(type(node).__name__)
        return original(self, node, loss, delta, slots)

    def refuse(*args, **kwargs):
        raise AssertionError("a broadcast landing took the masked pull-back")

    monkeypatch.setattr(_graph.Landings, "_pull_summed", spy)
    monkeypatch.setattr(_graph.Landings, "_pull_masked", refuse)
    model = _perturbed(Broadcasts())
    x = torch.randn(6, 3, 4)
    check_model(model, lambda: model(x), two_losses, batch=6, granularities=("sample", 2))
    assert {"ExpandBackward0", "AddBackward0", "SubBackward0"} <= set(summed)


class Projection(nn.Module):
    """A projection matrix multiplied by batched features: its landing is not a sum."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.proj = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        return self.inp(x).tanh() @ self.proj


def test_a_landing_that_is_not_a_sum_keeps_the_masked_pull_back(monkeypatch):
    masked = []
    original = _graph.Landings._pull_masked

    def spy(self, node, loss, delta):
        masked.append(type(node).__name__)
        return original(self, node, loss, delta)

    monkeypatch.setattr(_graph.Landings, "_pull_masked", spy)
    model = _perturbed(Projection())
    x = torch.randn(4, 4)
    check_model(model, lambda: model(x), two_losses, batch=4, granularities=("sample",))
    assert "MmBackward0" in masked


class Uneven(nn.Module):
    """One Linear (with bias) called on three passes: the first reaches only the first loss,
    the second both, the third only the second loss."""

    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 5)
        self.heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(4))

    def forward(self, x):  # [B, 3, 4]
        a, b, c = (self.shared(x[:, i]).tanh() for i in range(3))
        va = self.heads[0](a) + self.heads[1](b) + (a * b).sum(1, keepdim=True)
        return va, self.heads[2](b) + self.heads[3](c)  # separate outputs: separate reach


@pytest.mark.parametrize("strategy", ["ghost", "auto"])
def test_ghost_gramian_over_calls_reached_by_different_losses(monkeypatch, strategy):
    swapped = []
    original = _layers.LinearWork._ghost_pair

    def spy(self, k, left, right, same):
        swapped.append(not same and len(left) < len(right))
        return original(self, k, left, right, same)

    monkeypatch.setattr(_layers.LinearWork, "_ghost_pair", spy)
    model = _perturbed(Uneven())
    x = torch.randn(4, 3, 4)

    def losses(out):
        va, vt = out
        return {"va": (va - 1).pow(2).mean() + (va @ va.T).logsumexp(1).mean(),
                "vt": vt.sin().sum() - 0.3 * (vt @ vt.T).diagonal().mean()}

    check_model(model, lambda: model(x), losses, batch=4, granularities=("sample", 2),
                strategy=strategy)  # fmt: skip
    if strategy == "ghost":
        assert any(swapped) and not all(swapped)


def test_gradients_are_handed_over_without_copies_and_never_shared():
    """Empty ``p.grad`` take the freshly computed update itself: no two parameters' gradients
    share memory, and changing one in place (as an optimizer may) leaves the others and a
    second step's accumulation correct."""
    model = _perturbed(Uneven())
    x = torch.randn(4, 3, 4)

    def losses():
        va, vt = model(x)
        return {"va": (va - 1).pow(2).mean(), "vt": vt.sin().sum()}

    harm = Harmonizer(model, method="gr", granularity="sample")
    harm.backward(losses())
    grads = [p.grad for p in model.parameters()]
    starts = [g.data_ptr() for g in grads]
    assert len(set(starts)) == len(starts)
    reference = [g.clone() for g in grads]
    grads[0].zero_()
    assert all(torch.equal(g, r) for g, r in zip(grads[1:], reference[1:]))
    model.zero_grad(set_to_none=True)
    harm.backward(losses())
    harm.backward(losses())  # accumulates into the gradients the first backward handed over
    pairs = zip(model.parameters(), reference)
    assert all(torch.allclose(p.grad, 2 * r, atol=1e-6) for p, r in pairs)


def test_each_layer_lets_its_recorded_tensors_go_once_its_update_is_written(monkeypatch):
    """The step's peak: a layer's inputs and output gradients are released right after its
    update is computed, not after every layer's (so the gradients replace them)."""
    model = _perturbed(Uneven())
    x = torch.randn(4, 3, 4)
    held_before = []
    original = _layers.LinearWork.update

    def spy(self, weights):
        others = [w for w in seen if w is not self]
        held_before.append(sum(c.inp is not None for w in others for c in w.calls))
        seen.append(self)
        return original(self, weights)

    seen: list = []
    monkeypatch.setattr(_layers.LinearWork, "update", spy)
    harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.3)
    va, vt = model(x)
    harm.backward({"va": (va - 1).pow(2).mean(), "vt": vt.sin().sum()})
    assert len(held_before) == 5 and held_before == [0] * 5
