"""NCE / MIL-NCE against direct loops over the formulas and closed forms."""

import math

import pytest
import torch
import torch.nn.functional as F

from gradharmony.losses import gather_with_grad, local_rows, mil_nce, nce


def loop_mil_nce(z_v, z_t, tau, cand=None, samp=None, direction="both", normalize=True):
    """Per-triplet MIL-NCE written as plain loops over anchors, clips and candidates."""
    B, k, _ = z_t.shape
    cand = torch.ones(B, k, dtype=torch.bool) if cand is None else cand
    samp = torch.ones(B, dtype=torch.bool) if samp is None else samp
    if normalize:
        z_v = z_v / z_v.norm(dim=-1, keepdim=True)
        z_t = z_t / z_t.norm(dim=-1, keepdim=True)
    valid = [bool(samp[i]) and bool(cand[i].any()) for i in range(B)]
    out = []
    for i in range(B):
        if not valid[i]:
            out.append(torch.zeros(()))
            continue
        num = [z_v[i] @ z_t[i, c] / tau for c in range(k) if cand[i, c]]
        den = []
        for j in range(B):
            if not valid[j]:
                continue
            for c in range(k):
                if not cand[j, c]:
                    continue
                if direction in ("both", "v2t"):
                    den.append(z_v[i] @ z_t[j, c] / tau)  # video i vs narration (j, c)
            for c in range(k):
                if direction in ("both", "t2v") and cand[i, c]:
                    den.append(z_v[j] @ z_t[i, c] / tau)  # narration (i, c) vs video j
        out.append(torch.logsumexp(torch.stack(den), 0) - torch.logsumexp(torch.stack(num), 0))
    return torch.stack(out), torch.tensor(valid)


@pytest.mark.parametrize("direction", ["both", "v2t", "t2v"])
@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_mil_nce_matches_loop(direction, tau):
    B, k, D = 6, 3, 5
    z_v, z_t = torch.randn(B, D), torch.randn(B, k, D)
    got = mil_nce(z_v, z_t, temperature=tau, direction=direction, reduction="none")
    want, _ = loop_mil_nce(z_v, z_t, tau, direction=direction)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    mean = mil_nce(z_v, z_t, temperature=tau, direction=direction)
    torch.testing.assert_close(mean, want.mean(), rtol=1e-5, atol=1e-5)


def test_mil_nce_masks_match_loop_and_gradient():
    B, k, D = 7, 4, 6
    z_v = torch.randn(B, D, requires_grad=True)
    z_t = torch.randn(B, k, D, requires_grad=True)
    cand = torch.rand(B, k) > 0.3
    cand[:, 0] = True
    cand[5] = False  # a clip whose candidates are all padding counts as masked
    samp = torch.tensor([True, False, True, True, False, True, True])
    got = mil_nce(z_v, z_t, 0.1, candidate_mask=cand, sample_mask=samp, reduction="none")
    want, valid = loop_mil_nce(z_v, z_t, 0.1, cand, samp)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got[~valid] == 0).all()

    loss = mil_nce(z_v, z_t, 0.1, candidate_mask=cand, sample_mask=samp)
    g_v, g_t = torch.autograd.grad(loss, (z_v, z_t))
    o_v, o_t = torch.autograd.grad(want.sum() / valid.sum(), (z_v, z_t))
    torch.testing.assert_close(g_v, o_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_t, o_t, rtol=1e-5, atol=1e-6)
    # masked triplets and padding candidates receive no gradient at all
    assert (g_v[~valid] == 0).all() and (g_t[~valid] == 0).all()
    assert (g_t[~cand] == 0).all()


def test_sample_mask_equals_dropping_the_rows():
    B, k, D = 8, 2, 4
    z_v, z_t = torch.randn(B, D), torch.randn(B, k, D)
    samp = torch.tensor([1, 1, 0, 1, 0, 1, 1, 1], dtype=torch.bool)
    masked = mil_nce(z_v, z_t, 0.2, sample_mask=samp)
    subset = mil_nce(z_v[samp], z_t[samp], 0.2)
    torch.testing.assert_close(masked, subset)


def test_nce_closed_forms():
    B, D = 9, 8
    z_v, z_a = torch.randn(B, D), torch.randn(B, D)
    tau = 0.07
    s = F.normalize(z_v, dim=1) @ F.normalize(z_a, dim=1).T / tau
    target = torch.arange(B)
    # paper Eq. (2): softmax cross-entropy of video i over all audios
    torch.testing.assert_close(nce(z_v, z_a, tau, direction="v2a"), F.cross_entropy(s, target))
    torch.testing.assert_close(nce(z_v, z_a, tau, direction="a2v"), F.cross_entropy(s.T, target))
    # reference form: one softmax over row i and column i, the positive at position i
    both = F.cross_entropy(torch.cat([s, s.T], dim=1), target)
    torch.testing.assert_close(nce(z_v, z_a, tau), both)
    # and mil_nce with k = 1 is nce
    torch.testing.assert_close(mil_nce(z_v, z_a[:, None], tau), both)


def test_nce_perfect_pairs_closed_form():
    B = 5
    z = torch.eye(B)
    for tau in (1.0, 0.25):
        want = math.log(2 * math.exp(1 / tau) + 2 * (B - 1)) - 1 / tau
        assert nce(z, z, temperature=tau).item() == pytest.approx(want, rel=1e-6)


def test_temperature_is_a_logit_scale():
    z_v, z_t = torch.randn(5, 3), torch.randn(5, 2, 3)
    a = mil_nce(z_v, z_t, temperature=0.3, normalize=False)
    b = mil_nce(z_v / 0.3, z_t, temperature=1.0, normalize=False)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, mil_nce(z_v, z_t, temperature=1.0, normalize=False))


def test_normalize_flag():
    z_v, z_t = torch.randn(4, 3), torch.randn(4, 2, 3)
    torch.testing.assert_close(mil_nce(3 * z_v, z_t), mil_nce(z_v, z_t))
    assert not torch.allclose(mil_nce(3 * z_v, z_t, normalize=False),
                              mil_nce(z_v, z_t, normalize=False))


def test_all_masked_batch_is_zero_with_zero_gradient():
    z_v = torch.randn(4, 3, requires_grad=True)
    z_t = torch.randn(4, 2, 3, requires_grad=True)
    loss = mil_nce(z_v, z_t, sample_mask=torch.zeros(4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z_v.grad, torch.zeros_like(z_v))
    assert torch.equal(z_t.grad, torch.zeros_like(z_t))


def test_bf16_inputs_are_computed_in_float32():
    z_v, z_t = torch.randn(6, 8), torch.randn(6, 2, 8)
    got = mil_nce(z_v.bfloat16(), z_t.bfloat16())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, mil_nce(z_v.bfloat16().float(), z_t.bfloat16().float()))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(4, 3)), r"z_t must have shape \[B, k, D\]"),
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(5, 2, 3)), r"z_t must have shape \[B=4"),
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(4, 2, 3), temperature=0), "temperature"),
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(4, 2, 3),
                         candidate_mask=torch.ones(4, 3, dtype=torch.bool)), "candidate_mask"),
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(4, 2, 3),
                         sample_mask=torch.ones(4)), "sample_mask must have dtype"),
        (lambda: mil_nce(torch.full((4, 3), float("nan")), torch.randn(4, 2, 3)), "z_v .*NaN"),
        (lambda: mil_nce(torch.randn(4, 3), torch.randn(4, 2, 3), direction="x"), "direction"),
        (lambda: nce(torch.randn(4, 3), torch.randn(4, 5)), "z_a must have the shape of z_v"),
        (lambda: nce(torch.randn(4, 3).long(), torch.randn(4, 3)), "floating-point"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_gather_without_distributed_is_identity():
    z = torch.randn(3, 2)
    assert gather_with_grad(z) is z
    assert local_rows(3) == slice(0, 3)
