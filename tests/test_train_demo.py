"""``gradharmony demo``: the plan of stages, skipping what is done, and (slow) end to end."""

import json

import pytest
import torch

from gradharmony.train.checkpoint import save_atomic
from gradharmony.train.demo import _finished, main, plan


def test_plan_runs_the_package_commands_in_order(tmp_path):
    cmds = plan(["--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"), "steps=7"])
    assert [c[0] for c in cmds] == ["make-data", "build-vocab", "pretrain", "eval", "report"]
    train = cmds[2]
    assert "steps=7" in train and "resume=true" in train
    assert f"data.vocab={tmp_path / 'd' / 'vocab.json'}" in train
    assert cmds[3][cmds[3].index("--run") + 1] == str(tmp_path / "r" / "demo")


def test_a_finished_run_is_recognised(tmp_path):
    run = tmp_path / "demo"
    assert not _finished(run)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("steps: 10\n")
    save_atomic({"step": 9}, run / "checkpoints" / "last.pt")
    assert not _finished(run)
    save_atomic({"step": 10}, run / "checkpoints" / "last.pt")
    assert _finished(run)


def test_a_failing_stage_stops_the_demo(tmp_path, capsys):
    # a data folder that claims to be generated but holds no training shards: stage 2
    # (the vocabulary) fails, nothing after it runs
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "info.json").write_text("{}")
    rc = main(["--data", str(tmp_path / "d"), "--runs", str(tmp_path / "r"), "--quiet"])
    assert rc != 0
    assert "stage 'vocabulary' failed" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_demo_end_to_end_beats_chance(tmp_path):
    data, runs = tmp_path / "data", tmp_path / "runs"
    assert main(["--data", str(data), "--runs", str(runs), "--clips", "256", "--quiet",
                 "steps=60", "log_every=10"]) == 0
    run = runs / "demo"
    assert (run / "report.md").is_file() and any(run.glob("*.png"))
    ev = json.loads((run / "eval.json").read_text())
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=False)["step"] == 60
    assert "retrieval" in json.dumps(ev)
