"""Opening a run directory never executes code from it.

Every malicious file below carries a pickle (or YAML tag) that creates a marker file when it
is loaded the unsafe way; each test first shows that the payload is live (the unsafe load does
create the marker), then that the command refuses the file in one line with exit status 2
and that the marker was not created.
"""

import pathlib
import pickle
import shutil

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from gradharmony.cli import main as gradharmony
from gradharmony.train.runfiles import RunFileError, read_config, read_npz
from tests.test_train_standin import STANDIN_OVERRIDES


class Touch:
    """Unpickling this creates ``marker`` (it calls ``pathlib.Path.touch``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _evil_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "model": {}, "extra": Touch(marker)}, path)


def _run_dir(root, marker, preset="tiny"):
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"method": "gr", "seed": 0, "steps": 5, "batch_size": 4,
                                     "model": {"preset": preset}}), run / "config.yaml")
    _evil_checkpoint(run / "checkpoints" / "last.pt", marker)
    return run


def _data(root):
    """A --data folder that passes the up-front checks (splits exist, one shard): the run
    directory is what gets refused."""
    data = root / "data"
    for split in ("retrieval", "action", "sound"):
        (data / split).mkdir(parents=True, exist_ok=True)
    (data / "retrieval" / "000000.tar").write_bytes(b"")
    return data


def _refused(capsys, rc, command, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gradharmony {command}: "), err
    for w in words:
        assert w in err, (w, err)
    return err


def test_the_payloads_are_live(tmp_path):
    # the oracle for every test below: loaded the unsafe way, each file runs its payload
    marker = tmp_path / "m1"
    _evil_checkpoint(tmp_path / "a.pt", marker)
    torch.load(tmp_path / "a.pt", weights_only=False)
    assert marker.exists()
    marker = tmp_path / "m2"
    np.savez(tmp_path / "b.npz", x=np.array([Touch(marker)], dtype=object))
    with np.load(tmp_path / "b.npz", allow_pickle=True) as z:
        z["x"]
    assert marker.exists()
    marker = tmp_path / "m3"
    (tmp_path / "c.yaml").write_text(_evil_yaml(marker))
    yaml.unsafe_load((tmp_path / "c.yaml").read_text())
    assert marker.exists()


def _evil_yaml(marker):
    return f"method: gr\nsteps: !!python/object/apply:builtins.open ['{marker}', 'w']\n"


@pytest.mark.parametrize("command", ["eval", "score"])
def test_eval_and_score_refuse_a_malicious_checkpoint(tmp_path, capsys, command):
    marker = tmp_path / "pwned"
    run = _run_dir(tmp_path, marker)
    rc = gradharmony([command, "--run", str(run), "--data", str(_data(tmp_path)), "--quiet"])
    _refused(capsys, rc, command, "refusing checkpoint", str(run / "checkpoints" / "last.pt"),
             "pathlib")
    assert not marker.exists()


def test_eval_refuses_a_config_with_python_tags(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _run_dir(tmp_path, tmp_path / "unused")
    (run / "config.yaml").write_text(_evil_yaml(marker))
    rc = gradharmony(["eval", "--run", str(run), "--data", str(_data(tmp_path)), "--quiet"])
    _refused(capsys, rc, "eval", "cannot read", "config.yaml")
    assert not marker.exists()


def test_a_model_factory_named_by_a_run_is_called_only_when_allowed(tmp_path, capsys):
    run = _run_dir(tmp_path, tmp_path / "unused", preset="torch.hub:load")
    rc = gradharmony(["eval", "--run", str(run), "--data", str(_data(tmp_path)), "--quiet"])
    _refused(capsys, rc, "eval", "model.preset", "'torch.hub:load'", "--allow-model-factory")
    # allowed, it gets as far as the checkpoint, which is then refused
    rc = gradharmony(["eval", "--run", str(run), "--data", str(_data(tmp_path)), "--quiet",
                      "--allow-model-factory", "torch.hub:load"])
    _refused(capsys, rc, "eval", "refusing checkpoint")


def test_resume_refuses_a_malicious_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _evil_checkpoint(tmp_path / "x" / "checkpoints" / "last.pt", marker)
    rc = gradharmony(["pretrain", "--quiet", *STANDIN_OVERRIDES, f"run_dir={tmp_path}",
                      "name=x", "steps=2", "resume=true"])
    _refused(capsys, rc, "pretrain", "refusing checkpoint", "pathlib")
    assert not marker.exists()
    assert not (tmp_path / "x" / "metrics.jsonl").exists()


def test_demo_refuses_a_malicious_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _run_dir(tmp_path / "runs", marker)
    run.rename(tmp_path / "runs" / "demo")
    rc = gradharmony(["demo", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"),
                      "--quiet"])
    _refused(capsys, rc, "demo", "refusing checkpoint", "pathlib")
    assert not marker.exists()
    assert not (tmp_path / "data").exists()  # no stage ran


def _report_run(root, marker):
    from tests.test_report import _fake_run

    run = _fake_run(root, "r", "gr", 0, 20.0, np.random.default_rng(0))
    _evil_checkpoint(run / "checkpoints" / "last.pt", marker)
    return run


def test_report_never_opens_a_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _report_run(tmp_path, marker)
    assert gradharmony(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").is_file()
    assert not marker.exists()


@pytest.mark.parametrize("name", ["eval_embeddings.npz", "scores.examples.npz",
                                  "conflicts/cos_00000000-00000019.npz"])
def test_report_refuses_an_npz_with_pickled_objects(tmp_path, capsys, name):
    marker = tmp_path / "pwned"
    run = _report_run(tmp_path, tmp_path / "unused")
    np.savez(run / name, **{"step_0" if "conflicts" in name else "video_vt":
                            np.array([Touch(marker)], dtype=object)})
    rc = gradharmony(["report", str(run), "--out", str(tmp_path / "out")])
    _refused(capsys, rc, "report", "refusing", name.split("/")[-1], "pickled")
    assert not marker.exists()
    assert not (tmp_path / "out" / "report.md").exists()


def test_read_npz_refuses_a_raw_pickle_named_npz(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "a.npz").write_bytes(pickle.dumps(Touch(marker)))
    with pytest.raises(RunFileError, match="a.npz"):
        read_npz(tmp_path / "a.npz")
    assert not marker.exists()
    np.save(tmp_path / "b.npy", np.zeros(2))
    shutil.move(tmp_path / "b.npy", tmp_path / "b.npz")
    with pytest.raises(RunFileError, match="not an .npz archive"):
        read_npz(tmp_path / "b.npz")


def test_read_config_refuses_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADHARMONY_TEST_SECRET", "s3cret")
    p = tmp_path / "config.yaml"
    p.write_text("name: ${oc.env:GRADHARMONY_TEST_SECRET}\nsteps: 4\n")
    with pytest.raises(RunFileError, match=r"interpolation \(name = "):
        read_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(RunFileError, match="expected a mapping"):
        read_config(p)
    p.write_text("steps: 4\noptim: {lr: 1.0e-4}\n")
    assert read_config(p) == {"steps": 4, "optim": {"lr": 1e-4}}
