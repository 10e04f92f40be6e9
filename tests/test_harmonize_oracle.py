"""Harmonizer against the brute-force per-triplet oracle, every method x granularity."""

from __future__ import annotations

import pytest
import torch

from gradharmony.harmonize import Harmonizer, realign
from tests.test_harmonize_helpers import (
    TinyTriModal,
    flat_grad,
    losses_of,
    make_batch,
    oracle_group_grads,
)

pytestmark = pytest.mark.usefixtures("one_thread")

B = 6
GRANULARITIES = {"batch": 1, 2: 3, "sample": B}
_CACHE: dict = {}


def _setup(granularity):
    if granularity not in _CACHE:
        torch.manual_seed(0)
        model = TinyTriModal(depth=2)
        batch = make_batch(b=B)
        grads = oracle_group_grads(model, batch, GRANULARITIES[granularity]).double()
        _CACHE[granularity] = (model, batch, grads)
    return _CACHE[granularity]


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _oracle_update(method, grads, gamma, target=0.0):
    """Harmonized update from the per-group, per-loss gradient vectors [G, 2, P]."""
    va, vt = grads[:, 0], grads[:, 1]
    cos = _cos(va, vt)
    if method == "baseline":
        return (va + vt).sum(0)
    if method == "rw-va":
        return (2.5 * va + 0.5 * vt).sum(0)
    if method == "rw-vt":
        return (0.5 * va + 2.5 * vt).sum(0)
    if method == "gr":
        return sum(realign(va, vt)).sum(0)
    if method == "cl":
        return ((va + vt) * (cos > gamma).unsqueeze(1)).sum(0)
    if method == "both":
        proj = sum(realign(va, vt))
        keep = (va + vt)
        out = torch.where((cos < 0).unsqueeze(1), proj, keep)
        return (out * (cos > gamma).unsqueeze(1)).sum(0)
    if method == "gradvac":
        # Wang et al. 2020, Eq. (4)-(5), with target phi_hat
        phi, t = cos.unsqueeze(1), torch.tensor(target, dtype=grads.dtype)
        move = (phi < t).double()
        num = t * (1 - phi**2).sqrt() - phi * (1 - t**2).sqrt()
        va_new = va + move * va.norm(dim=1, keepdim=True) * num / (
            vt.norm(dim=1, keepdim=True) * (1 - t**2).sqrt()) * vt  # fmt: skip
        vt_new = vt + move * vt.norm(dim=1, keepdim=True) * num / (
            va.norm(dim=1, keepdim=True) * (1 - t**2).sqrt()) * va  # fmt: skip
        return (va_new + vt_new).sum(0)
    raise AssertionError(method)


def _gamma_for(cos):
    """A threshold that drops exactly the most conflicting group (when G > 1)."""
    s = cos.sort().values
    return float((s[0] + s[1]) / 2) if len(s) > 1 else float(s[0]) - 0.1


@pytest.mark.parametrize("granularity", list(GRANULARITIES))
@pytest.mark.parametrize("method", ["baseline", "rw-va", "rw-vt", "gr", "gradvac", "cl", "both"])
def test_update_and_cosines_match_oracle(method, granularity):
    model, batch, grads = _setup(granularity)
    cos = _cos(grads[:, 0], grads[:, 1])
    gamma = _gamma_for(cos)
    harm = Harmonizer(model, method=method, granularity=granularity, gamma=gamma)
    target = 0.0
    if method == "gradvac":
        target = float(cos.median())  # some groups are above the target, some below
        harm.gradvac.load_state_dict({"beta": 0.01, "target": torch.tensor([[1, target],
                                                                           [target, 1.0]])})
    model.zero_grad(set_to_none=True)
    stats = harm.backward(losses_of(model(**batch)), step=0)
    harm.remove()
    torch.testing.assert_close(stats.cos.double(), cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.norms["va"].double(), grads[:, 0].norm(dim=1), rtol=1e-5,
                               atol=0)  # fmt: skip
    expected = _oracle_update(method, grads, gamma, target)
    got = flat_grad(model).double()
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale)
    if method in ("cl", "both") and len(cos) > 1:
        assert int((~stats.kept).sum()) == 1
    if method == "both":
        torch.testing.assert_close(stats.projected, (cos > gamma) & (cos < 0))


@pytest.mark.parametrize(
    "strategy,keep", [("ghost", 0), ("materialize", -1), ("materialize", 0), ("materialize", 2**30)]
)
def test_weight_strategies_agree_with_oracle(strategy, keep):
    model, batch, grads = _setup(2)
    harm = Harmonizer(model, method="gr", granularity=2, strategy=strategy, keep_bytes=keep)
    model.zero_grad(set_to_none=True)
    stats = harm.backward(losses_of(model(**batch)))
    harm.remove()
    expected = _oracle_update("gr", grads, 0.0)
    torch.testing.assert_close(stats.cos.double(), _cos(grads[:, 0], grads[:, 1]), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    torch.testing.assert_close(flat_grad(model).double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max())  # fmt: skip


def test_the_test_exercises_conflicts():
    """The oracle batch has both conflicting and agreeing triplets (else the tests are weak)."""
    _, _, grads = _setup("sample")
    cos = _cos(grads[:, 0], grads[:, 1])
    assert (cos < 0).sum() >= 2 and (cos > 0).sum() >= 1
