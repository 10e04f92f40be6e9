"""Shards read through URLs: ``http://`` from a local server, ``pipe:`` commands, fsspec.

Every server here listens on 127.0.0.1 only (a thread of this process, shut down after the
module and by a timer in any case); proxies are switched off so that no request leaves the
machine. The oracle of every test is the same set read from the local files.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

from gradharmony.data import ClipSpec, ShardSet, TextTokenizer, make_loader
from gradharmony.data.cache import build_cache
from gradharmony.data.cli import main_build_vocab
from gradharmony.data.streams import iter_tar_groups
from gradharmony.data.writer import ShardWriter, encode_mp4

pytestmark = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="http:// shards are read with curl (WebDataset's gopen)")

SPEC = ClipSpec(frames=2, fps=4.0, size=8, crop=8, audio_rate=8000, clip_seconds=1.0)
N_CLIPS, PER_SHARD = 12, 3
SHARDS = "s-{000000..000003}.tar"
MAX_SERVE_S = 600  # the server stops by itself after this long


def clip_mp4(i: int) -> bytes:
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    frames[..., 0] = (20 * np.arange(12))[:, None, None]
    frames[..., 1] = 10 * i
    t = np.arange(12 * 2000) / 16000
    return encode_mp4(frames, 8, 0.4 * np.sin(2 * np.pi * (200 + 50 * i) * t), 16000)


class ShardServer:
    """Serves the files of ``root`` over HTTP on 127.0.0.1; counts requests, drops on demand.

    ``drops[name] = n``: the next ``n`` requests for ``name`` announce the full length, send
    half of the bytes, and close the connection.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: Counter = Counter()
        self.drops: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server interface
                name = self.path.lstrip("/")
                with server.lock:
                    server.requests[name] += 1
                    drop = server.drops.get(name, 0) > 0
                    if drop:
                        server.drops[name] -= 1
                path = server.root / name
                if "/" in name or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if drop:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.timer = threading.Timer(MAX_SERVE_S, self.httpd.shutdown)
        self.timer.daemon = True

    def __enter__(self) -> ShardServer:
        self.thread.start()
        self.timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.drops.clear()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """curl honours *_proxy variables: make sure every request goes to 127.0.0.1 directly."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                 "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote")
    with ShardWriter(d, prefix="s", max_count=PER_SHARD) as w:
        for i in range(N_CLIPS):
            w.write({"__key__": f"c{i:02d}", "mp4": clip_mp4(i), "txt": f"clip number {i}",
                     "json": {"video_id": f"v{i}", "neighbors": [f"clip number {i + 1}"]}})
    with ShardWriter(d, prefix="b", max_count=2) as w:  # a second, text-free set
        for i in range(4):
            w.write({"__key__": f"b{i:02d}", "mp4": clip_mp4(20 + i), "json": {}})
    return d


@pytest.fixture(scope="module")
def module_server(root):
    with ShardServer(root) as server:
        yield server


@pytest.fixture
def server(module_server):
    module_server.reset()
    yield module_server
    module_server.reset()


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.from_texts([f"clip number {i}" for i in range(N_CLIPS + 1)])


def local(root) -> str:
    return str(root / SHARDS)


def remote(kind: str, root, server) -> str:
    return f"{server.url}/{SHARDS}" if kind == "http" else f"pipe:cat {root}/{SHARDS}"


def read_all(pattern, tok, **kw) -> list[dict]:
    kw = {"batch_size": 5, "train": False, "infinite": False, **kw}
    return list(make_loader(pattern, SPEC, tok, **kw))


def keys(batches) -> list[str]:
    return [k for b in batches for k in b["key"]]


def assert_same_batches(got, want):
    assert [b["key"] for b in got] == [b["key"] for b in want]
    for x, y in zip(got, want):
        for name in ("video", "audio", "text", "candidate_mask"):
            assert torch.equal(x[name], y[name]), name


def test_url_patterns_are_brace_expanded_not_globbed(root, monkeypatch):
    got = ShardSet(["http://h/s-{000..002}.tar", "http://h/*.tar"]).paths()
    assert got == ["http://h/*.tar", "http://h/s-000.tar", "http://h/s-001.tar",
                   "http://h/s-002.tar"]
    cmds = ShardSet("pipe:aws s3 cp s3://bucket/shard-{000000..004999}.tar -").paths()
    assert len(cmds) == 5000 and cmds[0] == "pipe:aws s3 cp s3://bucket/shard-000000.tar -"
    mixed = ShardSet([str(root / "s-*.tar"), "https://h/x-{0..1}.tar"]).paths()
    assert len(mixed) == 4 + 2 and mixed[-2:] == ["https://h/x-0.tar", "https://h/x-1.tar"]
    if find_spec("fsspec") and not find_spec("s3fs"):  # fsspec without its S3 backend
        with pytest.raises(ValueError, match=r"s3:// backend is not installed .*s3fs"):
            ShardSet("s3://b/x-{0..3}.tar").paths()
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were not installed
    with pytest.raises(ValueError, match=r"'s3://b/x-0\.tar'.*fsspec.*pip install fsspec s3fs"):
        ShardSet("s3://b/x-{0..3}.tar").paths()
    with pytest.raises(ValueError, match=r"gs://.*pip install fsspec gcsfs"):
        make_loader("gs://b/x.tar", SPEC, None, batch_size=2)


def test_config_accepts_url_mixture_entries_and_names_a_missing_backend(monkeypatch):
    from gradharmony.train.config import ConfigError, load_config

    base = ["data.kind=shards"]
    cfg = load_config(overrides=[*base, "data.mixture=[{shards: 'http://h/s-{0..3}.tar'}]"])
    assert cfg.data.retries == 3 and cfg.data.retry_backoff == 2.0
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(ConfigError, match=r"data\.mixture\[0\]\.shards: .*fsspec"):
        load_config(overrides=[*base, "data.mixture=[{shards: 's3://b/s-{0..3}.tar'}]"])
    with pytest.raises(ConfigError, match=r"data\.retries"):
        load_config(overrides=[*base, "data.mixture=[{shards: 'http://h/a.tar'}]",
                               "data.retries=-1"])


@pytest.mark.parametrize("kind", ["http", "pipe"])
@pytest.mark.parametrize("train", [False, True])
def test_urls_give_the_local_clips_in_the_same_order(root, server, tok, kind, train):
    want = read_all(local(root), tok, train=train, seed=4, shuffle_buffer=4)
    got = read_all(remote(kind, root, server), tok, train=train, seed=4, shuffle_buffer=4)
    assert sorted(keys(want)) == [f"c{i:02d}" for i in range(N_CLIPS)]
    assert_same_batches(got, want)
    if kind == "http":  # each shard streamed once
        assert server.requests == {f"s-{j:06d}.tar": 1 for j in range(4)}


@pytest.mark.parametrize("per_reader", [1, 8])  # 1: split by shards; 8: split by clips
def test_ddp_times_workers_sharding_over_http(root, server, tok, monkeypatch, per_reader):
    from gradharmony.data import dataset as dataset_module

    monkeypatch.setattr(dataset_module, "SHARDS_PER_READER", per_reader)
    got = []
    for rank in range(2):
        loader = make_loader(f"{server.url}/{SHARDS}", SPEC, tok, batch_size=2, rank=rank,
                             world_size=2, num_workers=2, infinite=False, seed=1)
        rank_keys = keys(loader)
        assert rank_keys
        got += rank_keys
    assert sorted(got) == [f"c{i:02d}" for i in range(N_CLIPS)]  # no duplicate, none lost


def test_a_dropped_connection_is_retried_and_each_clip_comes_once(root, server, tok):
    server.drops["s-000001.tar"] = 1
    got = make_loader(f"{server.url}/{SHARDS}", SPEC, tok, batch_size=5, train=False,
                      infinite=False, retries=2, retry_backoff=0.01)
    batches = list(got)
    assert_same_batches(batches, read_all(local(root), tok))
    assert server.requests["s-000001.tar"] == 2 and server.drops["s-000001.tar"] == 0
    assert got.skipped.as_dict() == {"shard_retry": 1} and got.skipped.total == 0


def complete_groups_before(path: Path, cut: int) -> list[str]:
    """Oracle: keys whose group ends, and whose next group's first member is read, by ``cut``.

    The reader knows a group is complete when the first member of the next key has been read
    in full; the last group needs the whole tar.
    """
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    firsts = []
    for m in members:
        key = m.name.split(".", 1)[0]
        if not firsts or firsts[-1][0] != key:
            firsts.append((key, m.offset_data + m.size))
    return [k for (k, _), (_, end) in zip(firsts, firsts[1:]) if end <= cut]


def test_a_shard_failing_every_attempt_is_counted_and_the_run_goes_on(root, server, tok):
    server.drops["s-000001.tar"] = 3
    loader = make_loader(ShardSet([f"{server.url}/{SHARDS}", f"{server.url}/s-000009.tar"]),
                         SPEC, tok,
                         batch_size=5, train=False, infinite=False, retries=2,
                         retry_backoff=0.01)
    with pytest.warns(UserWarning, match=r"s-00000[19]\.tar.*after 2 retries"):
        got = keys(loader)
    shard1 = root / "s-000001.tar"
    kept = complete_groups_before(shard1, os.path.getsize(shard1) // 2)
    assert 0 < len(kept) < PER_SHARD  # the cut falls inside the shard
    want = [k for k in keys(read_all(local(root), tok)) if int(k[1:]) // PER_SHARD != 1
            or k in kept]
    assert got == want
    assert server.requests["s-000001.tar"] == 3 and server.requests["s-000009.tar"] == 3
    # the missing shard (HTTP 404) and the cut one: 2 retries each, then counted once
    assert loader.skipped.as_dict() == {"shard_retry": 4, "truncated_tar": 1,
                                        "unreadable_shard": 1}


@pytest.mark.parametrize("infinite", [False, True])
def test_a_set_whose_every_shard_fails_is_a_clear_error(root, server, tok, infinite):
    sets = [ShardSet(str(root / "b-*.tar"), text=False),
            ShardSet(f"{server.url}/missing-{{0..2}}.tar", name="gone")]
    loader = make_loader(sets, SPEC, tok, batch_size=2, infinite=infinite, retries=1,
                         retry_backoff=0.0)
    with pytest.warns(UserWarning, match="missing-"), pytest.raises(
            RuntimeError, match=r"gone.*no usable clip.*unreadable_shard.*every shard failed "
                                r"to open or read.*exit status 22"):
        list(loader)
    with pytest.warns(UserWarning, match="pipe:false"), pytest.raises(
            RuntimeError, match=r"pipe:false.*every shard failed.*exit status 1"):
        list(make_loader("pipe:false", SPEC, tok, batch_size=2, infinite=infinite, retries=0))


def test_mixture_of_local_and_remote_sets_reads_every_clip_once(root, server, tok):
    sets = [ShardSet(f"{server.url}/{SHARDS}", weight=2.0),
            ShardSet(str(root / "b-*.tar"), text=False)]
    loader = make_loader(sets, SPEC, tok, batch_size=4, infinite=False, seed=2, num_workers=2)
    got = sorted(keys(loader))
    assert got == [f"b{i:02d}" for i in range(4)] + [f"c{i:02d}" for i in range(N_CLIPS)]
    assert loader.skipped.total == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_a_remote_set_replays_the_same_batches(root, server, tok, workers):
    def fresh():
        return make_loader(f"{server.url}/{SHARDS}", SPEC, tok, batch_size=3, seed=2,
                           num_workers=workers, shuffle_buffer=4)

    loader, state, after = fresh(), None, []
    for j, b in enumerate(loader):
        if j == 4:
            state = copy.deepcopy(loader.state_dict())
        if j > 4:
            after.append(b)
        if j == 9:  # past the first epoch of 12 clips / 3 = 4 batches
            break
    resumed = fresh()
    resumed.load_state_dict(json.loads(json.dumps(state)))
    replay = []
    for b in resumed:
        replay.append(b)
        if len(replay) == len(after):
            break
    assert_same_batches(replay, after)


def test_cache_and_vocab_from_remote_sets_read_each_shard_once(root, server, tmp_path):
    want = build_cache(ShardSet(local(root)), SPEC, tmp_path / "local", progress=False)
    got = build_cache(ShardSet(f"{server.url}/{SHARDS}"), SPEC, tmp_path / "http",
                      progress=False)
    for name in ("frames.u8", "audio.i16", "index.json"):
        assert (got / name).read_bytes() == (want / name).read_bytes(), name
    assert server.requests == {f"s-{j:06d}.tar": 1 for j in range(4)}
    server.reset()
    outs = {}
    for kind, pattern in [("local", local(root)), ("http", f"{server.url}/{SHARDS}"),
                          ("pipe", f"pipe:cat {root}/{SHARDS}")]:
        outs[kind] = tmp_path / f"{kind}.json"
        assert main_build_vocab(["--shards", pattern, "--out", str(outs[kind]), "--quiet"]) == 0
    assert outs["http"].read_bytes() == outs["local"].read_bytes()
    assert outs["pipe"].read_bytes() == outs["local"].read_bytes()
    assert server.requests == {f"s-{j:06d}.tar": 1 for j in range(4)}


def test_fsspec_urls_read_the_local_clips(root, tok):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for j in range(4):
        fs.pipe(f"/remote-test/s-{j:06d}.tar", (root / f"s-{j:06d}.tar").read_bytes())
    try:
        got = read_all(f"memory://remote-test/{SHARDS}", tok)
        assert_same_batches(got, read_all(local(root), tok))
    finally:
        fs.rm("/remote-test", recursive=True)


def test_a_command_that_fails_after_writing_the_whole_tar_is_not_taken_as_complete(root):
    path = root / "s-000000.tar"
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        assert [m.name.split(".")[0] for m in tar.getmembers()][::3] == ["c00", "c01", "c02"]
    for _ in range(3):  # the same every time: the whole output is read, then the status
        groups = list(iter_tar_groups(f"pipe:cat {path}; exit 3"))
        # the last group is delivered only after the command has exited cleanly
        assert [g[0] for g in groups[:-1]] == ["c00", "c01"]
        assert groups[-1].reason == "truncated_tar" and "exit 3" in str(groups[-1])
    ok = list(iter_tar_groups(f"pipe:cat {path}"))
    assert [g[0] for g in ok] == ["c00", "c01", "c02"]


PRETRAIN = [
    "--quiet", "steps=4", "batch_size=4", "log_every=2", "ckpt_every=2", "method=both",
    "granularity=sample", "data.kind=shards", "data.frames=2", "data.fps=4.0", "data.size=8",
    "data.crop=8", "data.audio_rate=8000", "data.clip_seconds=1.0", "data.text_len=3",
    "data.candidates=2", "data.retry_backoff=0.01", "model.preset=tests.test_train_standin:standin",
    "model.kwargs.frames=2", "model.kwargs.size=8", "model.kwargs.samples=8000",
    "model.kwargs.vocab=20", "optim.lr=0.01", "optim.min_lr=0.001", "optim.warmup_steps=1",
]


def test_pretrain_from_an_http_mixture_entry(root, server, tmp_path):
    from gradharmony.cli import main as gradharmony
    from gradharmony.train.rundir import read_metrics

    mixture = (f"data.mixture=[{{shards: '{server.url}/{SHARDS}', weight: 3.0}}, "
               f"{{shards: '{root}/b-*.tar', has_text: false}}]")
    server.drops["s-000002.tar"] = 1  # one transient failure: retried, the run goes on
    assert gradharmony(["pretrain", *PRETRAIN, mixture, f"run_dir={tmp_path}", "name=r"]) == 0
    rows = read_metrics(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 3]
    assert all(np.isfinite(r["loss"]) for r in rows)
    vocab = json.loads((tmp_path / "r" / "vocab.json").read_text())["model"]["vocab"]
    assert {"clip", "number", "0", "12"} <= set(vocab)  # built from the http shards
    assert server.requests["s-000002.tar"] >= 2  # the dropped stream was re-opened
    assert (tmp_path / "r" / "checkpoints" / "last.pt").is_file()
