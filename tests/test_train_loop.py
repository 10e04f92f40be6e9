"""The pre-training loop end to end on a tiny stand-in model and random batches."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gradharmony.losses import mil_nce, nce
from gradharmony.train.batches import RandomTriplets
from gradharmony.train.config import load_config
from gradharmony.train.loop import NonFiniteError, pretrain
from gradharmony.train.rundir import load_conflicts, read_metrics
from tests.test_train_standin import STANDIN_OVERRIDES, standin

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _cfg(tmp_path, *extra):
    return load_config(overrides=[*STANDIN_OVERRIDES, f"run_dir={tmp_path}", *extra])


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_baseline_run_equals_a_hand_written_adam_loop(tmp_path):
    cfg = _cfg(tmp_path, "method=baseline", "steps=6", "name=base")
    pretrain(cfg, progress=False)
    got = _weights(tmp_path / "base" / "checkpoints" / "last.pt")

    torch.manual_seed(cfg.seed)
    model = standin(frames=2, size=4, samples=32, vocab=20)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = RandomTriplets(8, 2, 4, 32, 3, 2, 20, seed=cfg.seed)
    for t in range(6):
        lr = 0.01 * (t + 1) / 2 if t < 2 else \
            0.001 + 0.5 * (0.01 - 0.001) * (1 + math.cos(math.pi * (t - 2) / 4))
        for group in opt.param_groups:
            group["lr"] = lr
        b = data.batch(t)
        out = model(b)
        loss = nce(out["video_va"], out["audio_va"]) + mil_nce(
            out["video_vt"], out["text_vt"], candidate_mask=b["candidate_mask"],
            sample_mask=b["has_text"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.state_dict().items():
        torch.testing.assert_close(got[name], p, rtol=1e-5, atol=1e-6, msg=name)


def test_run_directory_holds_config_metrics_conflicts_and_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "method=both", "granularity=sample", "steps=4", "name=r")
    summary = pretrain(cfg, progress=False)
    rdir = tmp_path / "r"
    assert (rdir / "config.yaml").is_file() and (rdir / "checkpoints" / "last.pt").is_file()
    assert any((rdir / "tb").iterdir())
    rows = read_metrics(rdir)
    assert [r["step"] for r in rows] == [1, 3]
    for key in ("loss", "loss_va", "loss_vt", "lr", "cos_mean", "cos_p5", "cos_p95",
                "kept_frac", "projected_frac", "clips_per_s", "gamma"):
        assert key in rows[0], key
    cos = load_conflicts(rdir)
    assert sorted(cos) == [0, 1, 2, 3] and all(c.shape == (8,) for c in cos.values())
    assert np.all(np.abs(np.concatenate(list(cos.values()))) <= 1 + 1e-6)
    assert summary["steps"] == 4
    assert load_config(rdir / "config.yaml").method == "both"


def test_an_existing_run_is_not_overwritten_without_resume(tmp_path):
    pretrain(_cfg(tmp_path, "steps=1", "name=x"), progress=False)
    with pytest.raises(ValueError, match="resume"):
        pretrain(_cfg(tmp_path, "steps=1", "name=x"), progress=False)


def test_all_dropped_steps_leave_weights_and_adam_moments_untouched(tmp_path):
    # gamma = 1 drops every group (cos <= 1 always)
    cfg = _cfg(tmp_path, "method=cl", "gamma0=1.0", "gamma_end=1.0", "steps=3", "name=d")
    torch.manual_seed(cfg.seed)
    init = standin(frames=2, size=4, samples=32, vocab=20).state_dict()
    summary = pretrain(cfg, progress=False)
    ckpt = torch.load(tmp_path / "d" / "checkpoints" / "last.pt", weights_only=False)
    for name, p in init.items():
        assert torch.equal(ckpt["model"][name], p), name
    assert ckpt["optimizer"]["state"] == {}
    assert summary["skipped_all_dropped"] == 3


class _NaNAfter(RandomTriplets):
    """Random batches whose video is NaN from step ``bad_from`` on."""

    def __init__(self, bad_from, **kw):
        super().__init__(**kw)
        self.bad_from = bad_from

    def batch(self, step):
        b = super().batch(step)
        if step >= self.bad_from:
            b["video"] = torch.full_like(b["video"], float("nan"))
        return b


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path):
    cfg = _cfg(tmp_path, "steps=20", "name=n", "max_nonfinite=3", "ckpt_every=2")
    data = _NaNAfter(5, batch_size=8, frames=2, size=4, audio_samples=32, text_len=3,
                     candidates=2, vocab_size=20)
    with pytest.raises(NonFiniteError, match="max_nonfinite=3"):
        pretrain(cfg, batches=data, progress=False)
    ckpt = torch.load(tmp_path / "n" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["step"] == 4  # the last good checkpoint, written before the bad steps
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    rows = read_metrics(tmp_path / "n")
    assert [r["skipped_nonfinite"] for r in rows if r.get("nonfinite")] == [1, 2, 3]


def _launch(run_dir, name, *extra):
    path = os.pathsep.join(filter(None, [str(ROOT), str(SRC), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "gradharmony.cli", "pretrain", "--quiet", *STANDIN_OVERRIDES,
           f"run_dir={run_dir}", f"name={name}", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path):
    common = ["method=gradvac", "granularity=2", "steps=30", "ckpt_every=2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses: the same reduction order, bit for bit
    try:
        pretrain(_cfg(tmp_path, *common, "name=full"), progress=False)
    finally:
        torch.set_num_threads(threads)
    want = _weights(tmp_path / "full" / "checkpoints" / "last.pt")

    proc = _launch(tmp_path, "killed", *common, "model.kwargs.delay=0.05")
    ckpt = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and torch.load(ckpt, weights_only=False)["step"] >= 4:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 4 <= step_at_kill < 30

    out, err = _launch(tmp_path, "killed", *common, "resume=true").communicate(timeout=180)
    assert b"resumed_from" in out, err.decode()
    got = _weights(ckpt)
    for name, p in want.items():
        assert torch.equal(got[name], p), name
    steps = [r["step"] for r in read_metrics(tmp_path / "killed")]
    assert steps == sorted(set(steps)) and steps[-1] == 29


def test_bf16_autocast_run_trains(tmp_path):
    cfg = _cfg(tmp_path, "precision=bf16", "method=gr", "granularity=sample", "steps=2",
               "name=bf", "log_every=1")
    summary = pretrain(cfg, progress=False)
    assert math.isfinite(summary["loss"]) and summary.get("skipped_nonfinite", 0) == 0


def test_config_is_not_mutated_and_the_saved_config_rebuilds_the_model(tmp_path):
    from gradharmony.train.loop import resolve_model_kwargs

    cfg = load_config(overrides=["data.kind=random", "data.crop=32", "data.size=32"])
    out = resolve_model_kwargs(cfg, vocab_size=77)
    assert dict(cfg.model.kwargs) == {}
    assert out.model.kwargs.vocab_size == 77 and out.model.kwargs.video_size == 32
