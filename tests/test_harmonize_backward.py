"""OutputGradients: per-loss gradients at recorded outputs, each part of the graph freed after use.

The oracle is one ``torch.autograd.grad(loss, outputs, retain_graph=True)`` per loss on an
identical, independently built graph.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import get_gradient_edge

from gradharmony.harmonize import Harmonizer
from gradharmony.harmonize._backward import OutputGradients
from tests.test_harmonize_helpers import TinyTriModal, losses_of, make_batch


def _graph(kind: str, seed: int = 0):
    """Losses and recorded intermediate tensors of a small graph of the given shape."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 4, generator=g, requires_grad=True)
    x, y, z = (torch.randn(3, 4, generator=g) for _ in range(3))
    shared = torch.tanh(x @ w)  # reached by both losses
    own_a = torch.sin(y @ w)  # reached by loss a only
    own_b = torch.cos(z @ w)  # reached by loss b only
    if kind == "passes":  # a shared pass and one pass per loss (VATT's video/audio/text)
        a = (shared * own_a).sum() + shared.pow(2).sum()
        b = (shared.exp() * own_b).sum()
        return [a, b], [shared, own_a, own_b]
    if kind == "nested":  # loss a enters the shared part twice, one entry below the other
        deeper = shared * 3
        a = (own_a * shared).sum() + deeper.sum()
        b = (deeper * own_b).sum()
        return [a, b], [shared, deeper, own_a, own_b]
    if kind == "loss-of-loss":  # loss b depends on loss a: a's root is shared (and above
        # the shared pass b enters directly, so this one is not separable either)
        a = (shared * own_a).sum()
        b = 2 * a + (shared * own_b).sum()
        return [a, b], [shared, own_a, own_b]
    if kind == "scaled":  # loss b is a multiple of loss a: a's root is shared, b has no pass
        a = (shared * own_a).sum()
        return [a, 3 * a], [shared, own_a, own_b]
    if kind == "three":  # three losses, each pair shares something
        c = (own_a * own_b).sum() + shared.sum()
        a = (shared * own_a).sum()
        b = (own_b.pow(2)).sum()
        return [a, b, c], [shared, own_a, own_b]
    raise ValueError(kind)


def _oracle(kind):
    losses, tensors = _graph(kind)
    return [
        torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
        for loss in losses
    ]


@pytest.mark.parametrize(
    "kind,split",
    [("passes", True), ("nested", False), ("loss-of-loss", False), ("scaled", True),
     ("three", True)],  # fmt: skip
)
def test_gradients_equal_one_backward_per_loss(kind, split):
    expected = _oracle(kind)
    losses, tensors = _graph(kind)
    grads = OutputGradients(losses, [get_gradient_edge(t) for t in tensors])
    assert grads.split is split
    got = [[None] * len(tensors) for _ in losses]
    for l, indices, values in grads:
        for i, v in zip(indices, values):
            assert got[l][i] is None, "a (loss, edge) pair was delivered twice"
            got[l][i] = v
    for l in range(len(losses)):
        for i in range(len(tensors)):
            if expected[l][i] is None:
                assert got[l][i] is None
                assert l not in grads.reached[i]
            else:
                torch.testing.assert_close(got[l][i], expected[l][i], rtol=1e-6, atol=1e-7)
                assert l in grads.reached[i]


def _chain():
    """Recorded outputs at the bottom; the nodes above them (which run) save tensors."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 4, generator=g, requires_grad=True)
    x, y = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    shared_in, own_in = torch.tanh(x @ w), torch.cos(y @ w)
    shared, own = shared_in.sin(), own_in.exp()  # SinBackward saves self, ExpBackward result
    a, b = (shared * own).sum(), shared.pow(3).sum()
    return [a, b], [shared_in, own_in], shared.grad_fn, own.grad_fn


def test_own_parts_are_freed_and_shared_part_by_the_last_loss():
    losses, tensors, shared_node, own_node = _chain()
    chunks = iter(OutputGradients(losses, [get_gradient_edge(t) for t in tensors]))
    next(chunks)  # loss a's own part has run, without retaining it
    with pytest.raises(RuntimeError, match="freed|second time"):
        _ = own_node._saved_result
    assert shared_node._saved_self is not None  # still needed by both losses
    list(chunks)
    with pytest.raises(RuntimeError, match="freed|second time"):
        _ = shared_node._saved_self


def test_plain_schedule_keeps_the_first_losses_graph():
    """The reason for the split: per-loss backwards retain what only the first loss needs."""
    losses, tensors, _, own_node = _chain()
    torch.autograd.grad(losses[0], tensors, retain_graph=True, allow_unused=True)
    torch.autograd.grad(losses[1], tensors, allow_unused=True)
    assert own_node._saved_result is not None


def test_loss_reaching_no_recorded_output_yields_nothing():
    w = torch.randn(3, requires_grad=True)
    h = w * 2
    a, b = h.sum(), w.pow(2).sum()
    grads = OutputGradients([a, b], [get_gradient_edge(h)])
    assert grads.reached == [{0}]
    assert [l for l, _, _ in grads] == [0]


def test_harmonizer_on_the_fallback_schedule_matches_the_split_one(monkeypatch):
    """Both schedules must give the same Gramian and update on the tri-modal test model."""
    results = []
    for force_plain in (False, True):
        torch.manual_seed(0)
        model = TinyTriModal()
        batch = make_batch(4)
        if force_plain:
            monkeypatch.setattr(OutputGradients, "_plan", lambda *a, **k: None)
        harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.3)
        stats = harm.backward(losses_of(model(**batch)))
        results.append((stats.gram, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-6, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
