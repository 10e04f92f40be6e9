"""The ``small-loss`` control against a brute-force oracle: CL's drop count, the top scores."""

from __future__ import annotations

import pytest
import torch

from gradharmony.harmonize import Harmonizer, small_loss_rule
from tests.test_harmonize_helpers import flat_grad, losses_of
from tests.test_harmonize_oracle import _cos, _setup

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("granularity", ["sample", 2])
def test_update_drops_cls_count_of_the_highest_scores(granularity):
    model, batch, grads = _setup(granularity)
    cos = _cos(grads[:, 0], grads[:, 1])
    G = len(cos)
    by_cos = cos.argsort()
    n = 2 if G >= 4 else 1
    gamma = float((cos[by_cos[n - 1]] + cos[by_cos[n]]) / 2)  # CL drops the n lowest cosines
    # scores that rank the groups CL keeps highest: small-loss must drop other groups
    group_scores = torch.zeros(G, dtype=torch.float64)
    group_scores[by_cos.flip(0)] = torch.arange(G, 0, -1, dtype=torch.float64)
    want_dropped = set(by_cos.flip(0)[:n].tolist())
    assert want_dropped.isdisjoint(by_cos[:n].tolist())
    scores = group_scores.repeat_interleave(6 // G)
    harm = Harmonizer(model, method="small-loss", granularity=granularity, gamma=gamma)
    model.zero_grad(set_to_none=True)
    stats = harm.backward(losses_of(model(**batch)), scores=scores)
    harm.remove()
    dropped = {g for g in range(G) if not bool(stats.kept[g])}
    assert dropped == want_dropped
    keep = torch.tensor([g not in want_dropped for g in range(G)]).unsqueeze(1)
    expected = ((grads[:, 0] + grads[:, 1]) * keep).sum(0)
    torch.testing.assert_close(flat_grad(model).double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max())
    torch.testing.assert_close(stats.cos.double(), cos, rtol=1e-5, atol=1e-6)


def test_rule_drops_nothing_when_cl_drops_nothing():
    kept = small_loss_rule(torch.tensor([0.1, 0.2]), -0.3, torch.tensor([9.0, 1.0]))
    assert kept.all()


def test_rule_ties_keep_the_earlier_group():
    kept = small_loss_rule(torch.tensor([-0.9, 0.5, 0.5]), 0.0, torch.tensor([1.0, 1.0, 1.0]))
    assert kept.tolist() == [False, True, True]


@pytest.mark.parametrize("bad,match", [(None, "needs scores"), (torch.ones(5), "5 values"),
                                       (torch.tensor([float("nan")] * 6), "finite")])
def test_bad_scores_raise_and_leave_grads(bad, match):
    model, batch, _ = _setup("sample")
    harm = Harmonizer(model, method="small-loss", granularity="sample", gamma=0.0)
    model.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match=match):
        harm.backward(losses_of(model(**batch)), scores=bad)
    harm.remove()
    assert all(p.grad is None for p in model.parameters())


def test_scores_are_refused_by_other_methods():
    model, batch, _ = _setup("sample")
    harm = Harmonizer(model, method="cl", granularity="sample", gamma=0.0)
    with pytest.raises(ValueError, match="small-loss.* only"):
        harm.backward(losses_of(model(**batch)), scores=torch.ones(6))
    harm.remove()
