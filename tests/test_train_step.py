"""One training step without a run directory, against hand-written references."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradharmony.harmonize import Harmonizer
from gradharmony.losses import mil_nce, nce
from gradharmony.train.batches import RandomTriplets
from gradharmony.train.config import load_config
from gradharmony.train.distributed import setup
from gradharmony.train.metrics_window import MetricsWindow
from gradharmony.train.schedule import make_scheduler
from gradharmony.train.state import TrainState
from gradharmony.train.step import train_step

LR, MIN_LR, WARMUP, STEPS, EPS = 0.01, 0.001, 2, 6, 1e-8


class Tiny(nn.Module):
    """Video, audio and text through one shared layer; embeddings as the trainer expects."""

    def __init__(self):
        super().__init__()
        self.video = nn.Linear(2 * 4 * 4 * 3, 6)
        self.audio = nn.Linear(32, 6)
        self.embed = nn.Embedding(20, 6)
        self.shared = nn.Linear(6, 6)
        self.v_vt = nn.Linear(6, 4)
        self.t_vt = nn.Linear(6, 4)

    def forward(self, batch):
        hv = torch.tanh(self.shared(self.video(batch["video"].flatten(1))))
        ha = torch.tanh(self.shared(self.audio(batch["audio"])))
        ht = torch.tanh(self.shared(self.embed(batch["text"]).mean(2)))
        return {"video_va": F.normalize(hv, dim=-1), "audio_va": F.normalize(ha, dim=-1),
                "video_vt": F.normalize(self.v_vt(hv), dim=-1),
                "text_vt": F.normalize(self.t_vt(ht), dim=-1)}


def _state(method="baseline", gamma=0.0, granularity="batch"):
    torch.manual_seed(0)
    cfg = load_config(overrides=["data.kind=random", f"method={method}",
                                 f"granularity={granularity}", f"steps={STEPS}"])
    model = Tiny()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=LR, eps=EPS)
    sched = make_scheduler(opt, LR, MIN_LR, WARMUP, STEPS)
    harm = Harmonizer(model, method=method, granularity=granularity, gamma=gamma)
    return TrainState(cfg, setup("cpu"), model, model, harm, params, opt, sched)


def _batch(step=0):
    return RandomTriplets(8, 2, 4, 32, 3, 2, 20, seed=1).batch(step)


def test_one_step_equals_a_hand_written_adam_step():
    state = _state()
    reference = copy.deepcopy(state.model)
    batch = _batch()
    outcome = train_step(state, batch)

    out = reference(batch)
    t = state.cfg.model.temperature
    loss = nce(out["video_va"], out["audio_va"], temperature=t) + mil_nce(
        out["video_vt"], out["text_vt"], temperature=t, candidate_mask=batch["candidate_mask"],
        sample_mask=batch["has_text"])
    loss.backward()
    loss = loss.item()
    lr = LR * 1 / WARMUP  # first warm-up step
    with torch.no_grad():
        for p in reference.parameters():
            # Adam's first step: the bias-corrected moments are g and g^2
            p -= lr * p.grad / (p.grad.abs() + EPS)

    assert outcome.finite and outcome.updated and state.step == 1
    assert outcome.loss == pytest.approx(loss, rel=1e-6)
    assert outcome.lr == pytest.approx(lr)
    for (name, got), want in zip(state.model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    assert not state.counts


def test_a_non_finite_batch_changes_no_parameter_and_is_counted():
    state = _state()
    before = copy.deepcopy(state.model.state_dict())
    batch = _batch()
    batch["video"][0, 0, 0, 0, 0] = float("nan")
    outcome = train_step(state, batch)
    assert not outcome.finite and np.isnan(outcome.loss)
    assert all(torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    assert state.counts["skipped_nonfinite"] == 1 and state.nonfinite_streak == 1
    assert state.step == 1 and state.scheduler.last_epoch == 1  # the schedule moved on
    assert not state.optimizer.state  # Adam never stepped

    assert train_step(state, _batch(1)).finite
    assert state.nonfinite_streak == 0 and state.counts["skipped_nonfinite"] == 1


def test_a_step_where_every_group_is_dropped_leaves_adam_untouched():
    # CL drops a group when cos <= gamma: gamma = 1 drops every group
    state = _state(method="cl", gamma=1.0)
    before = copy.deepcopy(state.model.state_dict())
    outcome = train_step(state, _batch())
    assert outcome.finite and not outcome.updated and outcome.stats.all_dropped
    assert all(torch.equal(before[k], v) for k, v in state.model.state_dict().items())
    assert not state.optimizer.state
    assert state.counts["skipped_all_dropped"] == 1 and state.step == 1


def test_per_sample_cosines_come_back_one_per_clip():
    state = _state(method="both", gamma=-0.3, granularity="sample")
    outcome = train_step(state, _batch())
    assert outcome.cos.shape == (8,) and np.all(np.abs(outcome.cos) <= 1 + 1e-6)
    assert outcome.per_triplet["va"].shape == (8,)
    assert outcome.loss == pytest.approx(outcome.losses["va"] + outcome.losses["vt"])


def test_metrics_window_averages_the_steps_since_the_last_row():
    times = iter([10.0, 14.0, 14.0, 15.0, 15.0])
    w = MetricsWindow(clock=lambda: next(times))
    w.add(loss=2.0, loss_va=1.0, loss_vt=1.0, cos=np.array([-1.0, 0.0, 1.0]),
          kept=np.array([0.0, 1.0, 1.0]), projected=np.array([0.0, 1.0, 0.0]), clips=3)
    w.add(loss=4.0, loss_va=3.0, loss_vt=1.0, cos=np.array([0.5]), kept=np.array([1.0]),
          projected=np.array([1.0]), clips=5)
    row = w.row(lr=0.5, gamma=-0.1, counts={"skipped_nonfinite": 2})
    # cosines pooled: sorted [-1, 0, 0.5, 1]; percentile q sits at position 3q/100
    assert row["cos_mean"] == pytest.approx(0.125)
    assert row["cos_p5"] == pytest.approx(-1 + 0.15)
    assert row["cos_p50"] == pytest.approx(0.25)
    assert row["cos_p95"] == pytest.approx(0.5 + 0.85 * 0.5)
    assert (row["loss"], row["loss_va"], row["loss_vt"]) == (3.0, 2.0, 1.0)
    assert row["kept_frac"] == pytest.approx(3 / 4)
    assert row["projected_frac"] == pytest.approx(2 / 4)
    assert row["clips_per_s"] == pytest.approx(8 / 4)
    assert (row["lr"], row["gamma"], row["skipped_nonfinite"]) == (0.5, -0.1, 2)
    assert list(row)[:5] == ["loss", "loss_va", "loss_vt", "lr", "gamma"]
    # the next row starts from an empty window
    w.add(loss=1.0, loss_va=1.0, loss_vt=0.0, cos=np.array([0.2]), kept=np.array([1.0]),
          projected=np.array([0.0]), clips=1)
    assert w.row(lr=0.5, gamma=0.0, counts={})["loss"] == 1.0


def test_small_loss_step_drops_the_highest_loss_triplets_in_cls_number():
    state = _state("small-loss", gamma=0.0, granularity="sample")
    cl = _state("cl", gamma=0.0, granularity="sample")
    batch = _batch()
    out = train_step(state, batch)
    ref = train_step(cl, batch)  # the same weights and batch: CL's decision on the same cosines
    np.testing.assert_allclose(out.cos, ref.cos, rtol=1e-5, atol=1e-6)
    n_drop = int((~ref.stats.kept).sum())
    assert 0 < n_drop < 8  # the test exercises a partial drop
    loss = out.per_triplet["va"] + out.per_triplet["vt"]
    dropped = set(np.flatnonzero(~out.stats.kept.numpy()).tolist())
    assert dropped == set(np.argsort(-loss, kind="stable")[:n_drop].tolist())
