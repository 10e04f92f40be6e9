"""Atomic checkpoint writes and RNG round trips."""

import random
import shutil

import numpy as np
import pytest
import torch

from gradharmony.train import checkpoint
from gradharmony.train.checkpoint import rng_state, save_atomic, set_rng_state


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1}, path)

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_states_round_trip():
    state = rng_state()
    want = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    random.random(), torch.rand(5)
    set_rng_state(state)
    got = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert want[0] == got[0] and want[1] == got[1] and torch.equal(want[2], got[2])


# -- the plain format, older checkpoints, kept checkpoints ------------------------------------

import pathlib  # noqa: E402

from gradharmony.train.checkpoint import (  # noqa: E402
    find_checkpoint,
    kept_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from gradharmony.train.runfiles import RunFileError  # noqa: E402
from tests.test_train_standin import STANDIN_OVERRIDES  # noqa: E402


def _pretrain(tmp_path, *extra):
    from gradharmony.train.config import load_config
    from gradharmony.train.loop import pretrain

    cfg = load_config(overrides=[*STANDIN_OVERRIDES, f"run_dir={tmp_path}", *extra])
    return pretrain(cfg, progress=False)


def test_a_trained_checkpoint_loads_with_torchs_own_weights_only_defaults(tmp_path):
    # no SAFE_GLOBALS here: the new format needs nothing beyond torch's defaults
    _pretrain(tmp_path, "method=gradvac", "granularity=2", "steps=3", "name=g")
    ckpt = torch.load(tmp_path / "g" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 3 and ckpt["harmonizer"]["gradvac"]["target"] is not None
    assert ckpt["config"]["method"] == "gradvac" and isinstance(ckpt["config"], dict)
    set_rng_state(ckpt["rng"][0])  # restores from the stored ints, lists and tensors
    want = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    set_rng_state(ckpt["rng"][0])
    assert want == (random.random(), np.random.rand(), want[2]) and torch.equal(  # noqa: NPY002
        torch.rand(2), want[2])


def test_older_checkpoints_with_a_numpy_rng_state_still_load_and_restore(tmp_path):
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(),  # noqa: NPY002
              "torch": torch.get_rng_state()}
    want = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    torch.save({"step": 2, "rng": [legacy]}, tmp_path / "old.pt")
    with pytest.raises(Exception, match="numpy"):  # torch's defaults alone refuse it
        torch.load(tmp_path / "old.pt", weights_only=True)
    set_rng_state(load_checkpoint(tmp_path / "old.pt")["rng"][0])
    got = (random.random(), np.random.rand(), torch.rand(2))  # noqa: NPY002
    assert want[:2] == got[:2] and torch.equal(want[2], got[2])


class _Touch:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_numpy_arrays_allowed_for_old_checkpoints_cannot_smuggle_objects(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "x": np.array([_Touch(str(marker))], dtype=object)},
               tmp_path / "a.pt")
    with pytest.raises(RunFileError, match=r"a\.pt: loading it would import and call .*Path"):
        load_checkpoint(tmp_path / "a.pt")
    assert not marker.exists()
    torch.load(tmp_path / "a.pt", weights_only=False)  # the payload is live
    assert marker.exists()


def test_unreadable_and_non_dict_checkpoints_are_one_line_errors(tmp_path):
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(RunFileError, match="cannot read checkpoint .*cut.pt") as err:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(err.value)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(RunFileError, match="expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_save_checkpoint_refuses_what_load_would_refuse_and_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['counts'\]\['x'\] is a numpy.float64"):
        save_checkpoint({"step": 1, "counts": {"x": np.float64(1.0)}}, tmp_path)
    with pytest.raises(TypeError, match="pathlib"):
        save_checkpoint({"step": 1, "p": [tmp_path]}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_keep_every_keeps_the_right_steps_and_a_kept_one_resumes_exactly(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        common = ["method=gradvac", "granularity=2", "steps=7", "ckpt_every=5", "keep_every=3"]
        _pretrain(tmp_path, *common, "name=k")
        ck = tmp_path / "k" / "checkpoints"
        assert sorted(p.name for p in ck.iterdir()) == \
            ["last.pt", "step_00000003.pt", "step_00000006.pt"]
        assert {s: load_checkpoint(p)["step"] for s, p in kept_checkpoints(ck).items()} == \
            {3: 3, 6: 6}
        assert load_checkpoint(ck / "last.pt")["step"] == 7
        # the kept step-3 checkpoint holds the whole state: resuming from it reaches the
        # uninterrupted run's final weights bit for bit
        (tmp_path / "r" / "checkpoints").mkdir(parents=True)
        shutil.copyfile(ck / "step_00000003.pt", tmp_path / "r" / "checkpoints" / "last.pt")
        summary = _pretrain(tmp_path, *common, "name=r", "resume=true")
    finally:
        torch.set_num_threads(threads)
    assert summary["resumed_from"] == 3
    want = load_checkpoint(ck / "last.pt")["model"]
    got = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["model"]
    for name, p in want.items():
        assert torch.equal(got[name], p), name


def test_keep_every_off_keeps_only_last(tmp_path):
    _pretrain(tmp_path, "steps=4", "name=o")
    assert [p.name for p in (tmp_path / "o" / "checkpoints").iterdir()] == ["last.pt"]


def test_find_checkpoint_by_step_file_or_last_and_lists_what_is_there(tmp_path):
    for step in (10, 20):
        save_checkpoint({"step": step}, tmp_path, keep=True)
    assert find_checkpoint(tmp_path).name == "last.pt"
    assert find_checkpoint(tmp_path, 10).name == "step_00000010.pt"
    assert find_checkpoint(tmp_path, "20").name == "step_00000020.pt"
    assert find_checkpoint(tmp_path, "step_00000010.pt").name == "step_00000010.pt"
    with pytest.raises(RunFileError, match="no checkpoint step 15 .*available: last, step 10, "
                                           "step 20$"):
        find_checkpoint(tmp_path, 15)
    with pytest.raises(RunFileError, match="expected 'last', a step number or a .pt file"):
        find_checkpoint(tmp_path, "../last.pt")


def test_load_run_takes_a_kept_step(tmp_path):
    from gradharmony.evaluate.run import load_run

    _pretrain(tmp_path, "steps=4", "keep_every=2", "name=e")
    run = tmp_path / "e"
    factory = "tests.test_train_standin:standin"
    with pytest.raises(RunFileError, match=f"--allow-model-factory {factory}"):
        load_run(run, checkpoint=2)
    loaded = load_run(run, checkpoint=2, allow_factory=factory)
    assert loaded.step == 2 and loaded.checkpoint.name == "step_00000002.pt"
    want = load_checkpoint(run / "checkpoints" / "step_00000002.pt")["model"]
    last = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    for name, p in loaded.model.state_dict().items():
        assert torch.equal(p, want[name]), name
    assert any(not torch.equal(want[k], last[k]) for k in want)  # step 2 is not step 4
    with pytest.raises(RunFileError, match="no checkpoint step 3 .*available: last, step 2, "
                                           "step 4"):
        load_run(run, checkpoint=3, allow_factory=factory)
