import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from gradharmony.report.build import build_report
from gradharmony.report.cli import main
from gradharmony.report.runs import pooled_cosines
from gradharmony.report.table import comparison_table
from gradharmony.train.rundir import RunLog


def _fake_run(root, name, method, seed, r10, rng):
    d = root / name
    (d / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"name": name, "method": method, "seed": seed,
                                     "granularity": "sample", "batch_size": 8}),
                   d / "config.yaml")
    log = RunLog(d, tensorboard=False)
    for step in range(20):
        log.conflicts(step, rng.normal(0.1 if method == "gr" else -0.1, 0.3, size=8))
        if step % 5 == 4:
            log.metrics(step, {"loss": 2.0, "loss_va": 1.0, "loss_vt": 1.0 + seed,
                               "cos_mean": 0.0, "kept_frac": 1.0})
    log.close()
    ev = {"retrieval": {"video_to_text": {"R@1": r10 / 2, "R@5": r10 - 1, "R@10": r10,
                                          "MedR": 100 - r10},
                        "text_to_video": {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "MedR": 9.0},
                        "protocol": {"n": 16, "windows": 2, "split": "x", "tie_rule": "p"}},
          "probe": {"video_action": {"top1": 50.0, "top5": 90.0,
                                     "protocol": {"C": 1.0, "split": "s"}}}}
    (d / "eval.json").write_text(json.dumps(ev))
    np.savez(d / "eval_embeddings.npz", video_vt=rng.normal(size=(12, 6)),
             text_vt=rng.normal(size=(12, 6)))
    rows = [{"key": f"k{i}", "cos": float(c), "text": f"narration {i}",
             "text_aligned": bool(c > 0), "audio_aligned": True}
            for i, c in enumerate(np.linspace(-1, 1, 20))]
    (d / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.savez(d / "scores.examples.npz",
             top_frames=rng.integers(0, 255, (2, 4, 8, 8, 3), dtype=np.uint8),
             top_index=np.array([19, 18]),
             bottom_frames=rng.integers(0, 255, (2, 4, 8, 8, 3), dtype=np.uint8),
             bottom_index=np.array([0, 1]))
    return d


def test_report_renders_from_two_tiny_runs(tmp_path):
    rng = np.random.default_rng(0)
    runs = [_fake_run(tmp_path, "base0", "baseline", 0, 20.0, rng),
            _fake_run(tmp_path, "gr0", "gr", 0, 30.0, rng),
            _fake_run(tmp_path, "gr1", "gr", 1, 40.0, rng)]
    out = tmp_path / "rep"
    assert main([str(r) for r in runs] + ["--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # gr: mean of 30 and 40 with sample std 7.07, best in its column
    assert "| gr | 2 |" in md and "**35.00 ± 7.07**" in md
    # baseline has the lower median rank (80 vs 65 ± 7.07): MedR best is gr's 65
    assert "**65.00 ± 7.07**" in md
    for png in ("fig4_conflicts.png", "fig4_histogram.png", "fig5_tsne.png",
                "fig3_contact_baseline.png", "fig3_contact_gr.png"):
        assert (out / png).stat().st_size > 5000, png
        assert f"]({png})" in md


def test_report_rejects_a_non_run(tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        build_report([tmp_path], tmp_path / "out")


def test_table_marks_lowest_median_rank():
    md = comparison_table([("a", {"MedR": 3.0, "R@1": 5.0}), ("b", {"MedR": 2.0, "R@1": 1.0})],
                          ["R@1", "MedR"])
    lines = md.splitlines()
    assert lines[2] == "| a | 1 | **5.00** | 3.00 |"
    assert lines[3] == "| b | 1 | 1.00 | **2.00** |"


def test_pooled_cosines_bins_steps_and_seeds():
    a = {s: np.full(2, float(s)) for s in range(10)}
    b = {s: np.full(1, -float(s)) for s in range(10)}
    centres, cos = pooled_cosines([a, b], max_bins=5)
    assert centres.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5]
    assert sorted(cos[1].tolist()) == [-3.0, -2.0, 2.0, 2.0, 3.0, 3.0]
