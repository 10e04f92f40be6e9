"""The narration vocabulary is the same whether ``gradharmony build-vocab`` or pre-training
builds it from the same shards."""

import io
import json
import tarfile

from gradharmony.data.cli import main_build_vocab
from gradharmony.train.config import load_config
from gradharmony.train.shards import build_vocab


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _awkward_shard(path) -> None:
    """Samples a loader skips, next to usable ones (video bytes are never read here)."""
    _tar(path, {
        "a.mp4": b"", "a.txt": b"a red ball",
        "a.json": json.dumps({"neighbors": ["it bounces", "", "  "]}).encode(),
        "b.mp4": b"", "b.txt": b"\xff\xfe blue cube",  # not UTF-8: the sample is skipped
        "b.json": b"{}",
        "c.mp4": b"", "c.txt": b"green cone", "c.json": b"{not json",  # bad_json: skipped
        "d.mp4": b"", "d.txt": b"   ",  # empty narration: its neighbours still count
        "d.json": json.dumps({"neighbors": ["purple"]}).encode(),
    })


def _words(vocab_file) -> dict[str, int]:
    return json.loads(vocab_file.read_text())["model"]["vocab"]


def test_build_vocab_and_pretraining_read_the_same_narrations(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _awkward_shard(shards / "s-0.tar")
    cli_out, train_out = tmp_path / "cli.json", tmp_path / "train.json"
    assert main_build_vocab(["--shards", str(shards / "*.tar"), "--out", str(cli_out),
                             "--quiet"]) == 0
    cfg = load_config(overrides=["data.kind=shards", f"data.mixture=[{{shards: '{shards}'}}]"],
                      check=False)
    build_vocab(cfg, train_out)
    want = {"[PAD]", "[UNK]", "a", "red", "ball", "it", "bounces", "purple"}
    assert set(_words(cli_out)) == want
    assert _words(train_out) == _words(cli_out)
