"""Atomic checkpoint writes and RNG round trips."""

import random

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
