"""The experiment driver: skip finished runs, refuse foreign folders and configs, resume
half-finished runs from their checkpoint (tiny stand-in runs of a few steps)."""

import json

import pytest
import torch

from gradharmony.experiment import Experiment, ExperimentError, RunSpec
from gradharmony.experiment.cli import main as experiment_main
from tests.test_train_standin import STANDIN_OVERRIDES

BASE = [*STANDIN_OVERRIDES, "steps=5", "ckpt_every=2", "granularity=sample", "device=cpu"]


def _exp(out, extra=()):
    return Experiment("evidence", None, out, [*BASE, *extra], log=lambda m: None)


def _weights(run):
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_a_finished_run_is_skipped_and_its_files_untouched(tmp_path):
    exp = _exp(tmp_path)
    spec = RunSpec("a-seed0", ("seed=0",))
    assert exp.state(spec) == "new"
    assert exp.train(spec) == "new"
    ckpt = exp.run_dir(spec) / "checkpoints" / "last.pt"
    stamp = ckpt.stat().st_mtime_ns
    again = _exp(tmp_path)  # a second invocation of the same experiment
    assert again.state(spec) == "finished"
    assert again.train(spec) == "finished"
    assert ckpt.stat().st_mtime_ns == stamp
    assert json.loads((exp.run_dir(spec) / "experiment.json").read_text())["finished"]


def test_a_folder_of_another_config_is_refused(tmp_path):
    exp = _exp(tmp_path)
    exp.train(RunSpec("a", ("seed=0",)))
    with pytest.raises(ExperimentError, match="--out .* another resolved config"):
        _exp(tmp_path, ["optim.lr=0.02"])
    with pytest.raises(ExperimentError, match="another kind"):
        Experiment("table1", None, tmp_path, BASE, log=lambda m: None)
    # the same name with other overrides is a different run: refused, not overwritten
    with pytest.raises(ExperimentError, match="trained with another config"):
        exp.state(RunSpec("a", ("seed=1",)))
    foreign = exp.out / "runs" / "b"
    foreign.mkdir(parents=True)
    with pytest.raises(ExperimentError, match="not made by this experiment"):
        exp.state(RunSpec("b"))


def test_a_half_finished_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    import gradharmony.train.loop as loop

    spec = RunSpec("r", ("seed=3",))
    whole = _exp(tmp_path / "whole")
    whole.train(spec)

    exp = _exp(tmp_path / "cut")
    real = loop.to_device
    calls = {"n": 0}

    def dying(batch, device):
        calls["n"] += 1
        if calls["n"] == 4:  # step 3: after the checkpoint of step 2
            raise KeyboardInterrupt
        return real(batch, device)

    monkeypatch.setattr(loop, "to_device", dying)
    with pytest.raises(KeyboardInterrupt):
        exp.train(spec)
    monkeypatch.setattr(loop, "to_device", real)
    assert exp.state(spec) == "partial"
    assert torch.load(exp.run_dir(spec) / "checkpoints" / "last.pt",
                      weights_only=False)["step"] == 2
    assert exp.train(spec) == "partial"
    assert exp.state(spec) == "finished"
    a, b = _weights(whole.run_dir(spec)), _weights(exp.run_dir(spec))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_that_died_before_its_first_checkpoint_restarts(tmp_path):
    exp = _exp(tmp_path)
    spec = RunSpec("r", ("seed=0",))
    exp.train(spec)
    meta = exp.run_dir(spec) / "experiment.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "finished": False}))
    (exp.run_dir(spec) / "checkpoints" / "last.pt").unlink()
    assert exp.state(spec) == "restart"
    assert exp.train(spec) == "restart"
    assert exp.state(spec) == "finished"


def test_experiment_cli_rejects_unknown_experiments_and_bad_lists():
    with pytest.raises(ValueError, match="unknown experiment 'table9'"):
        experiment_main(["table9"])
    with pytest.raises(ValueError, match="--ks: expected a comma list"):
        experiment_main(["evidence", "--out", "x", "--ks", "a"])


@pytest.mark.slow
def test_evidence_end_to_end_on_tiny_shards(tmp_path):
    """Two tiny VATT runs (k = 1, 2) on 16 clips: trained, scored, documented; a rerun skips."""
    import numpy as np

    from gradharmony.data.writer import write_shards
    from gradharmony.experiment.evidence import run_evidence
    from tests.test_evaluate_cli import MODEL, _clip

    rng = np.random.default_rng(0)
    words = ["red", "green", "blue"]
    samples = []
    for i in range(16):
        lab, kind = i % 3, ["aligned", "aligned", "off_topic", "shifted"][i % 4]
        word = words[lab] if kind != "off_topic" else words[(lab + 1) % 3]
        samples.append({"__key__": f"c{i:03d}", "mp4": _clip(lab, rng)[0],
                        "txt": f"a {word} square",
                        "json": {"video_id": f"v{i // 4}", "text_noise": kind,
                                 "text_aligned": kind == "aligned", "audio_aligned": i % 5 != 0,
                                 "audio_noise": "aligned" if i % 5 else "music",
                                 "neighbors": ["a square", "a red square"]}})
    write_shards(samples, tmp_path / "train", prefix="t", max_count=4)
    kwargs = {k: v for k, v in MODEL.items()
              if k not in ("video_frames", "video_size", "audio_seconds", "audio_rate",
                           "vocab_size", "max_words", "num_candidates")}
    over = ["data.kind=shards", f"data.mixture=[{{shards: {tmp_path / 'train'}, weight: 1.0, "
            "has_text: true}]", "data.frames=4", "data.fps=4.0", "data.size=32", "data.crop=32",
            "data.audio_rate=8000", "data.clip_seconds=1.0", "data.text_len=6", "batch_size=4",
            "steps=4", "ckpt_every=2", "log_every=2", "device=cpu", "model.preset=tiny",
            "optim.warmup_steps=1", "data.shuffle_buffer=4"]
    over += [f"model.kwargs.{k}={json.dumps(v)}" for k, v in kwargs.items()]
    logs = []
    doc = run_evidence(None, tmp_path / "ev", None, seeds=(0,), ks=(1, 2), overrides=over,
                       n_boot=20, stages=2, drop_batches=1, log=logs.append)
    md = doc.read_text()
    assert "| k=2 | shuffled order, scope shared | text_misaligned |" in md
    assert "| k=1 | training steps 2–3 (train mode, logged) | text_misaligned |" in md
    assert "gradharmony score --run" in md and "Dropping a triplet" in md
    s = json.loads((tmp_path / "ev" / "scores" / "k2-seed0" / "shard.summary.json").read_text())
    assert s["order"] == "shard" and s["k"] == 2 and s["same_video_pairs_per_batch"] == 6.0
    logs.clear()
    run_evidence(None, tmp_path / "ev", None, seeds=(0,), ks=(1, 2), overrides=over,
                 n_boot=20, stages=2, drop_batches=1, log=logs.append)
    assert sum("skipped" in m for m in logs) == 2 + 6  # 2 runs, 6 scorings


def test_drop_comparison_removed_update_equals_training_on_the_kept_triplets_only():
    """Oracle: the 'removed' update is the plain gradient of the batch cut down to the kept
    triplets (sliced, not masked)."""
    from gradharmony.experiment.drop import drop_updates
    from gradharmony.harmonize import Harmonizer
    from gradharmony.train.batches import RandomTriplets
    from gradharmony.train.loop import per_triplet_losses
    from tests.test_train_standin import standin

    torch.manual_seed(0)
    model = standin(frames=2, size=4, samples=32, vocab=20)
    batch = RandomTriplets(8, 2, 4, 32, 3, 2, 20, seed=1).batch(0)
    harm = Harmonizer(model, method="cl", granularity="sample", gamma=0.0)
    cos = harm.backward(per_triplet_losses(model(batch), batch, 0.07)[0], step=0).cos
    harm.remove()
    model.zero_grad(set_to_none=True)
    kept = cos > 0.0
    assert 0 < int(kept.sum()) < 8
    r = drop_updates(model, batch, "cl", gamma=0.0)
    assert r["dropped"] == pytest.approx(1 - float(kept.float().mean()))
    sub = {k: (v[kept] if torch.is_tensor(v) else [x for x, m in zip(v, kept) if m])
           for k, v in batch.items()}
    losses, _ = per_triplet_losses(model(sub), sub, 0.07)
    (losses["va"] + losses["vt"]).backward()
    want = torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    harm = Harmonizer(model, method="cl", granularity="sample", gamma=0.0)
    harm.backward(per_triplet_losses(model(batch), batch, 0.07)[0], step=0)
    harm.remove()
    own = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                     .double() for p in model.parameters()])
    model.zero_grad(set_to_none=True)
    assert r["cos"] == pytest.approx(float(own @ want / (own.norm() * want.norm())), abs=1e-5)
    assert r["norm_ratio"] == pytest.approx(float(want.norm() / own.norm()), rel=1e-5)
    assert r["cos"] < 0.9999  # dropping from the batch is not the own-pass drop
