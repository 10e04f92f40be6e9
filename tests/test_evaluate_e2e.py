"""End to end on the real pipeline: synthetic data -> pretrain -> eval -> score -> report."""

import json

import pytest

from gradharmony.cli import main as gradharmony


@pytest.mark.slow
def test_pipeline_eval_score_report(tmp_path):
    from gradharmony.data.synthetic.generate import generate
    from gradharmony.data.synthetic.plan import ClipSize

    data = tmp_path / "data"
    generate(data, seed=0, clips=48, size=ClipSize(frames=4, fps=4.0, size=32,
                                                    audio_rate=8000),
             retrieval=16, probe=(32, 16), av=(2, 2), workers=0, progress=False)
    runs = tmp_path / "runs"
    common = ["--quiet", f"run_dir={runs}", "steps=6", "batch_size=8", "log_every=2",
              "ckpt_every=3", "granularity=sample", "optim.warmup_steps=2",
              f"data.mixture=[{{shards: '{data / 'train'}'}}]", "data.frames=4",
              "data.fps=4.0", "data.size=32", "data.crop=32", "data.audio_rate=8000",
              "data.clip_seconds=1.0", "data.text_len=8", "data.candidates=2",
              "model.kwargs={depth: 1, width: 32, heads: 2, mlp_dim: 64, dropout: 0.0, "
              "video_patch: [2, 16, 16], audio_patch: 400}"]
    for method in ("baseline", "both"):
        assert gradharmony(["pretrain", *common, f"method={method}", f"name={method}"]) == 0
        run = str(runs / method)
        assert gradharmony(["eval", "--run", run, "--data", str(data), "--quiet",
                            "--finetune-epochs", "1"]) == 0
        assert gradharmony(["score", "--run", run, "--data", str(data / "train"), "--quiet",
                            "--n-boot", "100"]) == 0
        ev = json.loads((runs / method / "eval.json").read_text())
        assert ev["retrieval"]["protocol"]["n"] == 16
        assert "given" in ev["probe"]["video_action"]["protocol"]["split"]
        summary = json.loads((runs / method / "scores.summary.json").read_text())
        assert summary["n"] == 48 and summary["batch_size"] == 8
        assert "text_misaligned" in summary["auroc"]
    out = tmp_path / "report"
    assert gradharmony(["report", str(runs / "baseline"), str(runs / "both"),
                        "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| baseline | 1 |" in md and "| both | 1 |" in md
    for png in ("fig4_conflicts.png", "fig5_tsne.png", "fig3_contact_both.png"):
        assert (out / png).is_file()
