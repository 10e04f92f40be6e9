"""One owner for the reading state: the dataset is a fixed description, each iteration an
``EpochReading`` whose readers report positions and skips in ``ReaderOutput`` s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gradharmony.data import ClipSpec, TextTokenizer, make_loader
from gradharmony.data.writer import ShardWriter, encode_mp4

SPEC = ClipSpec(frames=2, fps=4.0, size=8, crop=8, audio_rate=8000, clip_seconds=1.0,
                text_len=3, candidates=2)
CLIPS, BAD = 9, 4  # clip BAD has no .json


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
    d = tmp_path_factory.mktemp("reading")
    with ShardWriter(d, prefix="r", max_count=3) as w:
        for i in range(CLIPS):
            frames = np.full((8, 8, 8, 3), 20 * i, np.uint8)
            member = {"__key__": f"c{i}", "mp4": encode_mp4(frames, 8), "txt": f"clip {i}"}
            if i != BAD:
                member["json"] = {"neighbors": [f"near {i}"]}
            w.write(member)
    return f"{d}/r-*.tar"


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.from_texts([f"clip {i} near {i}" for i in range(CLIPS)])


def _loader(pattern, tok, **kw):
    return make_loader(pattern, SPEC, tok, batch_size=2, seed=1,
                       shuffle_buffer=4, **kw)


def test_iterating_leaves_the_dataset_as_it_was(pattern, tok):
    loader = _loader(pattern, tok)
    before = dict(vars(loader.dataset))
    for j, _ in enumerate(loader):
        if j == 3:
            break
    resumed = _loader(pattern, tok)
    resumed.load_state_dict(loader.state_dict())
    next(iter(resumed))
    assert vars(loader.dataset).keys() == before.keys()
    assert all(vars(loader.dataset)[k] is v for k, v in before.items())


def test_a_reading_from_a_reported_position_continues_the_uninterrupted_one(pattern, tok):
    ds = _loader(pattern, tok).dataset
    it = iter(ds.reading(epoch=0))
    outputs = [next(it) for _ in range(8)]  # infinite: crosses epochs
    assert {o.reader for o in outputs} == {0}
    for j in range(len(outputs) - 1):
        after = next(iter(ds.reading(positions={0: outputs[j].position})))
        want = outputs[j + 1]
        assert after.batch["key"] == want.batch["key"]
        assert torch.equal(after.batch["video"], want.batch["video"])
        assert after.position == want.position


def test_each_skip_is_reported_once_per_epoch(pattern, tok):
    ds = _loader(pattern, tok, train=False, infinite=False).dataset
    outputs = list(ds.reading(epoch=0))
    skipped: dict[str, int] = {}
    for o in outputs:
        for reason, n in o.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"missing_json": 1}
    keys = [k for o in outputs if o.batch is not None for k in o.batch["key"]]
    assert keys == [f"c{i}" for i in range(CLIPS) if i != BAD]
