"""VATT meets the Harmonizer contract: per-triplet gradients equal one backward per triplet."""

import pytest
import torch

from gradharmony.harmonize import Harmonizer
from gradharmony.harmonize._backward import OutputGradients
from gradharmony.losses import mil_nce, nce
from gradharmony.models import VATTConfig, create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(agnostic, head_norm="layernorm"):
    cfg = VATTConfig(width=16, depth=1, heads=2, mlp_dim=32, video_frames=8, video_size=32,
                     audio_seconds=0.5, audio_rate=512, audio_patch=64, vocab_size=30,
                     text_embed_dim=8, max_words=5, num_candidates=2, va_dim=12, vt_dim=8,
                     dropout=0.0, head_norm=head_norm)
    model = create_model(cfg, modality_agnostic=agnostic).train()  # DropToken on
    B = 5
    text = torch.randint(1, 30, (B, 2, 5))
    text[:, 1, 3:] = 0
    batch = {"video": torch.rand(B, 8, 32, 32, 3), "audio": torch.rand(B, 256) * 2 - 1,
             "text": text, "candidate_mask": torch.tensor([[1, 1]] * 4 + [[1, 0]]).bool(),
             "has_text": torch.tensor([True, True, False, True, True])}
    return model, batch


def _losses(out, batch):
    return {"va": nce(out["video_va"], out["audio_va"]),
            "vt": mil_nce(out["video_vt"], out["text_vt"], candidate_mask=batch["candidate_mask"],
                          sample_mask=batch["has_text"])}


@pytest.mark.parametrize("agnostic", [True, False])
def test_per_triplet_cosines_match_one_backward_per_triplet(agnostic):
    model, batch = _setup(agnostic)  # LayerNorm heads: BatchNorm mixes triplets
    params = [p for p in model.parameters() if p.requires_grad]
    harm = Harmonizer(model, method="baseline", granularity="sample", measure=True)
    out = model(batch)
    losses = _losses(out, batch)

    # oracle: upstream gradient at the model outputs masked to triplet i's rows
    names = sorted(k for k in out if k.endswith(("_va", "_vt")))
    outs = [out[k] for k in names]
    per_loss = {}
    for lname, loss in losses.items():
        ups = torch.autograd.grad(loss, outs, retain_graph=True, allow_unused=True)
        ups = [torch.zeros_like(o) if u is None else u for o, u in zip(outs, ups)]
        rows = []
        for i in range(5):
            masked = [torch.zeros_like(u).index_copy(0, torch.tensor([i]), u[i:i + 1])
                      for u in ups]
            g = torch.autograd.grad(outs, params, masked, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if x is None else x).flatten()
                                   for p, x in zip(params, g)]))
        per_loss[lname] = torch.stack(rows)
    g_va, g_vt = per_loss["va"], per_loss["vt"]
    want = (g_va * g_vt).sum(1) / (g_va.norm(dim=1) * g_vt.norm(dim=1)).clamp(min=1e-30)
    want[g_vt.norm(dim=1) == 0] = 0.0  # the clip without narration: no L_vt gradient
    plain = torch.autograd.grad(losses["va"] + losses["vt"], params, retain_graph=True)

    stats = harm.backward(losses)
    torch.testing.assert_close(stats.cos, want, rtol=1e-3, atol=1e-4)
    assert g_vt[2].abs().max() == 0 and g_va[2].abs().max() > 0
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_batchnorm_heads_baseline_update_is_the_plain_gradient():
    model, batch = _setup(True, head_norm="batchnorm")
    params = [p for p in model.parameters() if p.requires_grad]
    harm = Harmonizer(model, method="baseline", granularity="sample", measure=True)
    losses = _losses(model(batch), batch)
    plain = torch.autograd.grad(losses["va"] + losses["vt"], params, retain_graph=True)
    stats = harm.backward(losses)
    assert stats.cos.shape == (5,)
    for p, g in zip(params, plain):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("agnostic", [True, False])
def test_vatt_backward_runs_each_losses_own_pass_once(agnostic, monkeypatch):
    """VATT's graph splits cleanly: audio is va's own pass, text vt's, video is shared."""
    seen = []
    init = OutputGradients.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(OutputGradients, "__init__", spy)
    model, batch = _setup(agnostic)
    harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.3)
    harm.backward(_losses(model(batch), batch), batch_size=5)
    (grads,) = seen
    assert grads.split
    kinds = {frozenset(r) for r in grads.reached}
    assert kinds == {frozenset({0}), frozenset({1}), frozenset({0, 1})}


def test_vatt_with_checkpointing_gives_the_same_harmonized_update():
    """Recomputed layers during the split backward must not change the Gramian or update."""
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, batch = _setup(True)
        model.set_grad_checkpointing(checkpointing)
        harm = Harmonizer(model, method="both", granularity="sample", gamma=-0.3)
        torch.manual_seed(1)  # the same DropToken draw in both runs
        stats = harm.backward(_losses(model(batch), batch), batch_size=5)
        results.append((stats.gram, [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-9)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
