"""Pure pieces against closed forms and hand-computed cases, plus property tests."""

from __future__ import annotations

import math

import pytest
import torch

from gradharmony.harmonize import (
    GammaSchedule,
    GradVac,
    both_rule,
    cosine,
    gr_weights,
    gram_cosine,
    pcgrad_weights,
    realign,
    reweight_weights,
)


def _gram(vectors):  # [G, L, n] -> [G, L, L]
    return vectors @ vectors.transpose(1, 2)


def test_cosine_hand_cases():
    assert float(cosine(torch.tensor([3.0, 4.0]), torch.tensor([4.0, 3.0]))) == pytest.approx(0.96)
    assert float(cosine(torch.tensor([1.0, 0.0]), torch.tensor([-2.0, 0.0]))) == pytest.approx(-1)
    torch.testing.assert_close(cosine(torch.zeros(3, 2), torch.randn(3, 2)), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        cosine(torch.zeros(3), torch.zeros(4))


def test_realign_hand_case_and_orthogonality():
    g_va, g_vt = torch.tensor([2.0, 0.0]), torch.tensor([-1.0, 1.0])
    va, vt = realign(g_va, g_vt)
    # <g_va, g_vt> = -2: va - (-2)/2 * vt = [1, 1]; vt - (-2)/4 * va = [0, 1]
    torch.testing.assert_close(va, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(vt, torch.tensor([0.0, 1.0]))
    assert float(va @ g_vt) == pytest.approx(0) and float(vt @ g_va) == pytest.approx(0)


def test_realign_rowwise_and_no_change_when_agreeing():
    a, b = torch.randn(50, 7), torch.randn(50, 7)
    va, vt = realign(a, b)
    agree = (a * b).sum(1) >= 0
    torch.testing.assert_close(va[agree], a[agree])
    torch.testing.assert_close(vt[agree], b[agree])
    for i in range(50):  # row-wise equals the 1-D call
        r = realign(a[i], b[i])
        torch.testing.assert_close(va[i], r[0])
        torch.testing.assert_close(vt[i], r[1])


def test_gr_weights_closed_form_matches_realign():
    v = torch.randn(40, 2, 9, dtype=torch.float64)
    w = gr_weights(_gram(v))
    expected = sum(realign(v[:, 0], v[:, 1]))
    torch.testing.assert_close((w.unsqueeze(2) * v).sum(1), expected)


def test_pcgrad_two_losses_equals_gr_and_three_losses_hand_case():
    v = torch.randn(30, 2, 5, dtype=torch.float64)
    torch.testing.assert_close(pcgrad_weights(_gram(v)), gr_weights(_gram(v)))
    # g0 = [1, 0], g1 = [-1, 1], g2 = [0, -1] -- every projection order computed by hand
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)

    def pcgrad_vectors(order_of):  # PCGrad as defined (vectors), order_of[i] = others of i
        out = []
        for i in range(3):
            gi = g[i].clone()
            for j in order_of[i]:
                d = gi @ g[j]
                if d < 0:
                    gi = gi - d / (g[j] @ g[j]) * g[j]
            out.append(gi)
        return sum(out)

    k = _gram(g.unsqueeze(0))
    seen = set()
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        w = pcgrad_weights(k, gen)[0]
        update = w @ g
        candidates = []
        for o0 in ([1, 2], [2, 1]):
            for o1 in ([0, 2], [2, 0]):
                for o2 in ([0, 1], [1, 0]):
                    candidates.append(pcgrad_vectors([o0, o1, o2]))
        match = [i for i, c in enumerate(candidates) if torch.allclose(c, update)]
        assert match, f"seed {seed}: {update} is no PCGrad ordering"
        seen.add(tuple(update.tolist()))
    assert len(seen) > 1  # orders really are random
    same = pcgrad_weights(k, torch.Generator().manual_seed(3))
    torch.testing.assert_close(same, pcgrad_weights(k, torch.Generator().manual_seed(3)))


def test_gradvac_closed_form_and_ema():
    vac = GradVac(beta=0.1)
    vac.load_state_dict({"beta": 0.1, "target": torch.tensor([[1.0, 0.5], [0.5, 1.0]])})
    g = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)  # cos = 0 < 0.5
    w = vac.weights(_gram(g))
    # g0' = g0 + |g0| (0.5 * 1 - 0) / (|g1| sqrt(0.75)) g1, and symmetrically
    c0 = 1 * 0.5 / (2 * math.sqrt(0.75))
    c1 = 2 * 0.5 / (1 * math.sqrt(0.75))
    torch.testing.assert_close(w, torch.tensor([[1 + c1, 1 + c0]], dtype=torch.float64))
    new0 = g[0, 0] + c0 * g[0, 1]
    assert float(cosine(new0, g[0, 1])) == pytest.approx(0.5)  # moved exactly to the target
    assert float(vac.target[0, 1]) == pytest.approx(0.9 * 0.5 + 0.1 * 0.0)
    state = vac.state_dict()
    other = GradVac()
    other.load_state_dict(state)
    torch.testing.assert_close(other.target, vac.target)
    assert other.beta == 0.1


def test_gradvac_no_change_above_target_and_default_beta():
    assert GradVac().beta == 0.01
    vac = GradVac()
    g = torch.tensor([[[1.0, 0.2], [1.0, 0.0]]], dtype=torch.float64)  # cos > 0 = target
    torch.testing.assert_close(vac.weights(_gram(g)), torch.ones(1, 2, dtype=torch.float64))


def test_reweight_and_both_rule_and_schedule():
    torch.testing.assert_close(reweight_weights(["vt", "va"], "rw-va"), torch.tensor([0.5, 2.5]))
    torch.testing.assert_close(reweight_weights(["va", "vt"], "rw-vt"), torch.tensor([0.5, 2.5]))
    with pytest.raises(ValueError, match="'va'"):
        reweight_weights(["a", "b"], "rw-va")
    kept, proj = both_rule(torch.tensor([-0.3, -0.29, 0.0, 0.5]), -0.3)
    assert kept.tolist() == [False, True, True, True]
    assert proj.tolist() == [False, True, False, False]
    s = GammaSchedule(-0.3, 0.0, total_steps=10)
    assert [s(t) for t in (0, 5, 10, 20)] == pytest.approx([-0.3, -0.15, 0.0, 0.0])
    assert GammaSchedule(0.1, 0.1)(123) == 0.1
    with pytest.raises(ValueError, match="total_steps"):
        GammaSchedule(-0.3, 0.0)


@pytest.mark.parametrize("fn", ["gr", "pcgrad3"])
def test_properties_scaling_symmetry(fn):
    """Weights of a harmonized update are invariant to scaling the whole Gramian, and the
    update is equivariant to permuting the losses; no change without conflict."""
    gen = torch.Generator().manual_seed(0)
    L = 2 if fn == "gr" else 3
    v = torch.randn(64, L, 6, dtype=torch.float64, generator=gen)
    k = _gram(v)

    def weights(gram):
        if fn == "gr":
            return gr_weights(gram)
        return pcgrad_weights(gram, torch.Generator().manual_seed(1))

    torch.testing.assert_close(weights(k * 37.0), weights(k))
    torch.testing.assert_close(gram_cosine(k * 37.0), gram_cosine(k))
    if fn == "gr":
        perm = [1, 0]
        torch.testing.assert_close(weights(k[:, perm][:, :, perm]), weights(k)[:, perm])
        # scaling one loss by c: its projection direction is unchanged, so the update's terms
        # are rescaled consistently: w_0(c g_0) * c g_0 == c * w_0(g_0) g_0
        c = 3.0
        vs = v.clone()
        vs[:, 0] *= c
        up_scaled = (weights(_gram(vs)).unsqueeze(2) * vs).sum(1)
        va, vt = realign(c * v[:, 0], v[:, 1])
        torch.testing.assert_close(up_scaled, va + vt)
    agree = (gram_cosine(k).flatten(1) >= 0).all(1)
    assert agree.any() or fn == "pcgrad3"
    torch.testing.assert_close(weights(k)[agree], torch.ones_like(weights(k)[agree]))
