"""The conjecture during training: cosines logged with clip keys and per-triplet losses, and the
report's AUROC over training stages from them."""


import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from gradharmony.data.writer import write_shards
from gradharmony.report.build import build_report
from gradharmony.report.conjecture import read_truth, stage_aurocs, training_rows
from gradharmony.train.config import load_config
from gradharmony.train.loop import pretrain
from gradharmony.train.rundir import RunLog, load_conflict_records, load_conflicts, read_metrics
from tests.test_train_standin import STANDIN_OVERRIDES


def test_training_logs_keys_and_per_triplet_losses(tmp_path):
    cfg = load_config(overrides=[*STANDIN_OVERRIDES, f"run_dir={tmp_path}", "steps=3",
                                 "name=keys", "method=gr", "log_every=1",
                                 "granularity=sample"])
    pretrain(cfg, progress=False)
    rec = load_conflict_records(tmp_path / "keys")
    metrics = {m["step"]: m for m in read_metrics(tmp_path / "keys") if "loss_va" in m}
    assert sorted(rec) == [0, 1, 2]
    for step, r in rec.items():
        assert r["keys"].tolist() == [f"random-{step}-{i}" for i in range(8)]
        assert r["cos"].shape == r["loss_va"].shape == r["loss_vt"].shape == (8,)
        # the per-triplet terms average to the logged batch losses (log_every=1)
        assert r["loss_va"].mean() == pytest.approx(metrics[step]["loss_va"], rel=1e-5)
        assert r["loss_vt"].mean() == pytest.approx(metrics[step]["loss_vt"], rel=1e-5)


def test_old_conflict_files_without_keys_still_read(tmp_path):
    (tmp_path / "conflicts").mkdir()
    np.savez(tmp_path / "conflicts" / "cos_00000000-00000001.npz",
             step_0=np.array([0.1, 0.2], np.float32), step_1=np.array([0.3], np.float32))
    assert {k: v.tolist() for k, v in load_conflicts(tmp_path).items()} == \
        {0: pytest.approx([0.1, 0.2]), 1: pytest.approx([0.3])}
    with pytest.raises(ValueError, match="without clip keys"):
        training_rows(tmp_path, {})


def _keyed_run(root, name="run", steps=40, batch=8, seed=0):
    """A run whose logged cosines separate misaligned clips better as training goes on."""
    rng = np.random.default_rng(seed)
    clips = [f"c{i:03d}" for i in range(64)]
    kinds = ["aligned", "aligned", "off_topic", "same_object_shift"]
    truth = {k: {"text_aligned": i % 4 < 2, "audio_aligned": True, "text_noise": kinds[i % 4],
                 "video_id": f"v{i // 4}"} for i, k in enumerate(clips)}
    write_shards([{"__key__": k, "json": t, "txt": "x"} for k, t in truth.items()],
                 root / "shards", prefix="s", max_count=16)
    d = root / name
    d.mkdir()
    OmegaConf.save(OmegaConf.create({
        "name": name, "method": "gr", "seed": 0, "granularity": "sample",
        "data": {"mixture": [{"shards": str(root / "shards"), "has_text": True}]}}),
        d / "config.yaml")
    log = RunLog(d, tensorboard=False)
    for step in range(steps):
        keys = rng.choice(clips, batch, replace=False)
        bad = np.array([not truth[k]["text_aligned"] for k in keys])
        cos = rng.normal(size=batch) - bad * (step / steps) * 3
        loss = rng.normal(size=batch) + bad * 0.5
        log.conflicts(step, cos, keys=list(keys), loss_va=np.zeros(batch), loss_vt=loss)
    log.close()
    return d, truth


def test_stage_aurocs_match_sklearn_on_each_stage(tmp_path):
    d, _ = _keyed_run(tmp_path)
    truth = read_truth(tmp_path / "shards")
    rows = training_rows(d, truth)
    assert len(rows) == 40 * 8 and rows[0]["video"].startswith("v")
    stages = stage_aurocs(rows, stages=4, n_boot=50)
    assert [s["steps"] for s in stages] == [[0, 9], [10, 19], [20, 29], [30, 39]]
    for st in stages:
        sub = [r for r in rows if st["steps"][0] <= r["step"] <= st["steps"][1]]
        y = [not r["text_aligned"] for r in sub]
        a = st["auroc"]["text_misaligned"]
        assert a["cos"]["auroc"] == pytest.approx(roc_auc_score(y, [-r["cos"] for r in sub]))
        assert a["loss"]["auroc"] == pytest.approx(roc_auc_score(y, [r["loss"] for r in sub]))
        assert a["cos"]["clusters"] <= 16  # resampled by video
        assert "text_misaligned:off_topic" in st["auroc"]
    first, last = (stages[i]["auroc"]["text_misaligned"]["cos"]["auroc"] for i in (0, -1))
    assert last > 0.9 > first


def test_training_rows_refuse_keys_without_truth_and_group_cosines(tmp_path):
    d, truth = _keyed_run(tmp_path)
    with pytest.raises(ValueError, match="no ground truth in the given shards"):
        training_rows(d, {k: v for k, v in list(truth.items())[:10]})
    g = tmp_path / "grouped"
    log = RunLog(g, tensorboard=False)
    log.conflicts(0, np.array([0.1]), keys=["c000", "c001"])
    log.close()
    with pytest.raises(ValueError, match="granularity=sample"):
        training_rows(g, truth)


def test_report_has_the_conjecture_section(tmp_path):
    d, _ = _keyed_run(tmp_path)
    md = build_report([d], tmp_path / "rep").read_text()
    assert "## The conjecture during training" in md
    assert "| run | 30–39 | text_misaligned |" in md


def test_training_rows_look_up_each_triplet_in_its_own_set(tmp_path):
    log = RunLog(tmp_path, tensorboard=False)
    log.conflicts(0, np.array([0.1, -0.2, 0.3]), keys=["a", "a", "b"], sets=[0, 1, 2],
                  loss_va=np.ones(3), loss_vt=np.zeros(3))
    log.close()
    sets = [{"a": {"text_aligned": True, "video_id": "v"}},
            {"a": {"text_aligned": False, "video_id": "v"}}, None]
    rows = training_rows(tmp_path, {}, sets)
    assert [(r["key"], r["video"], r["text_aligned"]) for r in rows] == \
        [("0/a", "0/v", True), ("1/a", "1/v", False)]  # set 2 (None) is left out
    with pytest.raises(ValueError, match="logged mixture set 2, but 2 set truths"):
        training_rows(tmp_path, {}, sets[:2])
    with pytest.raises(ValueError, match="no ground truth"):  # without sets: one truth for all
        training_rows(tmp_path, {"a": {"text_aligned": True}})


def test_a_mixture_run_logs_the_set_of_each_triplet(tmp_path):
    """Two shard sets with the same keys and different truths: every logged (set, key) is a
    clip of that set, both sets appear, and the rows take their own set's truth."""
    import json

    from gradharmony.data.writer import write_shards
    from tests.test_evaluate_cli import MODEL, _clip

    rng = np.random.default_rng(0)
    for s in (0, 1):
        write_shards([{"__key__": f"c{i:02d}", "mp4": _clip(i % 3, rng)[0], "txt": "a square",
                       "json": {"text_aligned": bool((i + s) % 2), "video_id": f"v{i}",
                                "origin": s}} for i in range(8)],
                     tmp_path / f"set{s}", prefix="t", max_count=8)
    kwargs = {k: v for k, v in MODEL.items()
              if k not in ("video_frames", "video_size", "audio_seconds", "audio_rate",
                           "vocab_size", "max_words", "num_candidates")}
    mixture = ", ".join(f"{{shards: {tmp_path / f'set{s}'}, weight: 1.0, has_text: true}}"
                        for s in (0, 1))
    over = ["data.kind=shards", f"data.mixture=[{mixture}]", "data.frames=4", "data.fps=4.0",
            "data.size=32", "data.crop=32", "data.audio_rate=8000", "data.clip_seconds=1.0",
            "data.text_len=6", "data.candidates=1", "batch_size=8", "steps=3", "ckpt_every=3",
            "log_every=1", "device=cpu", "model.preset=tiny", "optim.warmup_steps=1",
            "data.shuffle_buffer=4", "granularity=sample", "method=gr", f"run_dir={tmp_path}",
            "name=mix"]
    over += [f"model.kwargs.{k}={json.dumps(v)}" for k, v in kwargs.items()]
    pretrain(load_config(overrides=over), progress=False)
    recs = load_conflict_records(tmp_path / "mix")
    assert all(r["sets"].shape == r["keys"].shape == (8,) for r in recs.values())
    truths = [read_truth(tmp_path / f"set{s}") for s in (0, 1)]
    rows = training_rows(tmp_path / "mix", {}, truths)
    assert len(rows) == 3 * 8 and {r["key"][0] for r in rows} == {"0", "1"}
    for r in rows:
        s, key = r["key"].split("/")
        assert r["text_aligned"] == truths[int(s)][key]["text_aligned"]
    # the report reads it the same way; the same logs without sets are refused (keys clash)
    from gradharmony.report.conjecture import TruthClash, conjecture_table

    assert len(conjecture_table([tmp_path / "mix"], stages=1, n_boot=10)) > 2
    for f in (tmp_path / "mix" / "conflicts").glob("cos_*.npz"):
        z = dict(np.load(f))
        np.savez(f, **{k: v for k, v in z.items() if not k.startswith("sets_")})
    with pytest.raises(TruthClash, match="do not tell the set"):
        conjecture_table([tmp_path / "mix"], stages=1, n_boot=10)
