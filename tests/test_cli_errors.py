"""Every command answers a user's mistake with one line on stderr, exit status 2, no traceback,
and nothing written; options and ``key=value`` overrides may come in any order.

Each case runs the real ``gradharmony`` entry point in-process (a bug would surface as an
exception, i.e. a traceback) with the working directory in a fresh folder, and compares a
snapshot of that folder before and after: default outputs (``runs/``, ``data/``, the
``train-av`` cache) would show up there.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gradharmony.cli import COMMANDS, main
from gradharmony.errors import InputError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(REPO / "configs" / "demo.yaml")


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       p.stat().st_mtime_ns)
            for p in root.rglob("*")}


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """A working folder holding a few inputs: a fake run (config.yaml and an unreadable
    checkpoint), data splits without shards, a plain file, a caption manifest."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "fakerun"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("steps: 1\n")
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "nockpt").mkdir()
    (tmp_path / "nockpt" / "config.yaml").write_text("steps: 1\n")
    for split in ("retrieval", "action", "sound"):
        (tmp_path / "splits" / split).mkdir(parents=True)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "captions.csv").write_text("path,start,end,text\nv.mp4,0,1,hi\n")
    (tmp_path / "videos").mkdir()
    (tmp_path / "shards.tar").write_bytes(b"")
    (tmp_path / "bad.yaml").write_text("steps: [\n")
    (tmp_path / "badrun").mkdir()
    (tmp_path / "badrun" / "config.yaml").write_text("steps: [\n")
    (tmp_path / "badrun" / "checkpoints").mkdir()
    (tmp_path / "badrun" / "checkpoints" / "last.pt").write_bytes(b"x")
    (tmp_path / "badeval").mkdir()
    (tmp_path / "badeval" / "config.yaml").write_text("steps: 1\n")
    (tmp_path / "badeval" / "eval.json").write_text("{not json")
    return tmp_path


def check_one_line(ws, capsys, argv, command, *words):
    """Run ``gradharmony argv``: exit 2, one stderr line naming the command and ``words``,
    nothing written under ``ws``."""
    before = snapshot(ws)
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (argv, rc, err)
    assert len(lines) == 1, (argv, err)
    assert lines[0].startswith(f"gradharmony {command}"), lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(ws) == before, argv
    return lines[0]


CASES = {
    "pretrain": [
        (["--config", "nope.yaml"], ["config file", "nope.yaml"]),  # missing path
        (["data.kind=random", "steps=ten"], ["config error", "steps"]),  # malformed value
        (["run_dir=.", "data.kind=random", "method=gradvak"], ["method", "gradvak"]),
        (["data.mixture=[{shards: missing/*.tar}]"], ["data.mixture[0].shards", "missing"]),
        (["--config", "bad.yaml"], ["--config", "bad.yaml", "not valid YAML", "line 2"]),
        (["--config", DEMO_CONFIG, "--bogus"], ["unrecognized arguments: --bogus"]),
        ([], ["--config"]),  # nothing to train
    ],
    "eval": [
        (["--run", "runs/nope"], ["--run", "runs/nope", "no such folder"]),
        (["--run", "nockpt", "--data", "splits"], ["--run", "no checkpoint"]),
        (["--run", "fakerun", "--data", "/nonexistent"], ["--data", "/nonexistent"]),
        (["--run", "fakerun", "--data", "afile"], ["--data", "not a folder"]),
        (["--run", "fakerun", "--data", "videos"], ["--data", "no retrieval/ split"]),
        (["--run", "fakerun", "--data", "splits"], ["--run", "checkpoint", "last.pt"]),
        (["--run", "badrun", "--data", "splits"], ["--run", "badrun/config.yaml"]),
        (["--run", "fakerun", "--data", "splits", "--windows", "0"], ["--windows", ">= 1"]),
        (["--run", "fakerun", "--data", "splits", "--tasks", "retreival"],
         ["--tasks", "retreival"]),
        (["--run", "fakerun", "--data", "splits", "--device", "gpu"], ["--device", "gpu"]),
        (["--run", "fakerun", "--bogus"], ["unrecognized arguments: --bogus"]),
        ([], ["--run"]),
    ],
    "score": [
        (["--run", "fakerun", "--data", "/nonexistent"], ["--data", "/nonexistent"]),
        (["--run", "runs/nope", "--data", "splits"], ["--run", "runs/nope"]),
        (["--run", "fakerun", "--data", "afile"], ["--data", "afile"]),  # not a .tar
        (["--run", "fakerun", "--data", "shards.tar", "--out", "videos"], ["--out", "is a folder"]),
        (["--run", "nockpt", "--data", "shards.tar"], ["--run", "no checkpoint"]),
        (["--run", "fakerun", "--data", "shards.tar", "--device", "tpu"], ["--device", "tpu"]),
        (["--run", "fakerun", "--data", "x.tar", "--batch-size", "1"], ["--batch-size", ">= 2"]),
        (["--run", "fakerun", "--data", "x.tar", "--n-boot", "many"], ["--n-boot", "many"]),
        (["--run", "fakerun", "--data", "x.tar", "--examples", "0.9"], ["--examples"]),
        (["--run", "fakerun", "--data", "x.tar", "--bogus"], ["unrecognized arguments"]),
    ],
    "report": [
        (["runs/nope"], ["runs/nope", "no such folder"]),
        (["videos"], ["videos", "no config.yaml"]),
        (["fakerun", "--out", "afile"], ["--out", "is a file"]),
        (["badrun"], ["badrun", "config.yaml", "line 2"]),
        (["badeval"], ["badeval", "line 1 column 2"]),  # eval.json is not JSON
        (["fakerun", "--seed", "x"], ["--seed", "invalid int value"]),
        (["fakerun", "--bogus"], ["unrecognized arguments: --bogus"]),
        ([], ["runs"]),
    ],
    "make-data": [
        (["synthetic", "--out", "D", "--clips", "0"], ["--clips", ">= 1", "'0'"]),
        (["synthetic", "--out", "D", "--clips", "-3"], ["--clips"]),
        (["synthetic", "--out", "D", "--clips", "lots"], ["--clips", "lots"]),
        (["synthetic", "--out", "afile/D"], ["--out", "afile"]),  # a path under a file
        (["synthetic", "--out", "D", "--text-noise", "-0.2"], ["text_noise"]),
        (["synthetic", "--out", "D", "--bogus"], ["unrecognized arguments: --bogus"]),
        (["synthetic"], ["--out"]),
        (["imagenet"], ["unknown kind", "imagenet"]),
        ([], ["synthetic"]),
    ],
    "make-shards": [
        (["--videos", "nope", "--manifest", "captions.csv", "--out", "o"], ["--videos", "nope"]),
        (["--videos", "videos", "--manifest", "nope.csv", "--out", "o"], ["--manifest"]),
        (["--videos", "videos", "--manifest", "captions.csv", "--out", "afile"], ["--out"]),
        (["--videos", "videos", "--manifest", "captions.csv", "--out", "o",
          "--clips-per-shard", "0"], ["--clips-per-shard"]),
        (["--videos", "videos", "--manifest", "captions.csv", "--out", "o", "--fps", "-1"],
         ["--fps", "positive"]),
        (["--videos", "videos", "--manifest", "captions.csv", "--out", "o", "--bogus"],
         ["unrecognized arguments: --bogus"]),
    ],
    "build-vocab": [
        (["--shards", "nope/*.tar", "--out", "v.json"], ["--shards", "nope/*.tar"]),
        (["--shards", "nope/*.tar", "--out", "afile/v.json"], ["--out", "afile"]),
        (["--shards", "nope/*.tar", "--out", "v.json", "--min-freq", "0"], ["--min-freq"]),
        (["--shards", "nope/*.tar", "--out", "v.json", "--bogus"], ["unrecognized arguments"]),
        (["--out", "v.json"], ["--shards"]),
    ],
    "train-av": [
        (["--out", "afile/run"], ["--out", "afile"]),
        (["--cache-dir", "afile"], ["--cache-dir", "is a file"]),
        (["--n-train", "0"], ["--n-train", ">= 1"]),
        (["--method", "ogm", "--alpha", "-1"], ["alpha"]),
        (["--method", "magic"], ["--method", "invalid choice", "magic"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
    "experiment": [
        ([], ["experiment name", "evidence"]),
        (["nosuch"], ["unknown experiment", "nosuch"]),
        (["evidence", "--out", "x", "--ks", "0"], ["--ks", ">= 1"]),
        (["evidence", "--out", "x", "--seeds", "a,b"], ["--seeds", "integers"]),
        (["evidence", "--out", "afile"], ["--out", "afile"]),
        (["evidence", "--out", "x", "--config", "nosuch.yaml"], ["--config", "nosuch.yaml"]),
        (["evidence", "--out", "x", "--stages", "0"], ["--stages", ">= 1"]),
        (["evidence", "--bogus"], ["--out"]),
    ],
    "demo": [
        (["--data", "afile"], ["--data", "is a file"]),
        (["--clips", "0"], ["--clips", ">= 1"]),
        (["--tasks", "retreival"], ["--tasks", "retreival"]),
        (["--quiet", "stepz=3"], ["config error", "stepz"]),
        (["--bogus"], ["unrecognized arguments: --bogus"]),
    ],
}


def test_every_command_has_cases():
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("command, argv, words", [
    (command, argv, words) for command, cases in CASES.items() for argv, words in cases])
def test_a_mistake_is_one_line_exit_2_and_nothing_written(ws, capsys, command, argv, words):
    check_one_line(ws, capsys, [command, *argv], command, *words)


def test_usage_errors_name_the_command_and_point_to_help(ws, capsys):
    line = check_one_line(ws, capsys, ["eval", "--run", "x", "--windows", "two"], "eval",
                          "argument --windows", "'two'")
    assert line.endswith("(see `gradharmony eval --help`)")


def test_overrides_after_options(capsys):
    # argparse's plain parse_args stops taking `key=value` after the first option flag
    assert main(["pretrain", "--config", DEMO_CONFIG, "--quiet", "name=late", "data.kind=random",
                 "--print-config", "steps=7"]) == 0
    out = capsys.readouterr().out
    assert "name: late" in out and "steps: 7" in out and "kind: random" in out


def test_demo_overrides_and_runs_anywhere_on_the_line(tmp_path):
    from gradharmony.train.demo import plan

    cmds = plan(["--quiet", "steps=7", "--data", str(tmp_path / "d"), "method=gr"])
    assert "steps=7" in cmds[2] and "method=gr" in cmds[2]
    assert cmds[0][cmds[0].index("--out") + 1] == str(tmp_path / "d")


def test_report_runs_before_and_after_options(ws, capsys):
    # with plain parse_args, `b` after an option is an unrecognized argument; here it is a run
    line = check_one_line(ws, capsys, ["report", "fakerun", "--seed", "1", "nope"], "report",
                          "'nope'", "no such folder")
    assert "unrecognized" not in line


def test_help_still_exits_0(capsys):
    for name in COMMANDS:
        argv = [name, "synthetic", "--help"] if name == "make-data" else [name, "--help"]
        assert main(argv) == 0, name
        assert "usage" in capsys.readouterr().out


@pytest.fixture
def fake_command(monkeypatch):
    """A ``gradharmony boom`` command raising whatever ``raise_`` holds."""
    module = types.ModuleType("fake_gradharmony_command")
    state = {}

    def run(argv):
        raise state["error"]

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(COMMANDS, "boom", (module.__name__, "run", "raises"))
    return state


def test_handler_prints_an_input_error_as_one_line(fake_command, capsys):
    fake_command["error"] = InputError("--thing 'x': bad\n  expected a y\n")
    assert main(["boom"]) == 2
    assert capsys.readouterr().err == "gradharmony boom: --thing 'x': bad; expected a y\n"


@pytest.mark.parametrize("error", [ValueError("a bug"), RuntimeError("a bug"), KeyError("k")])
def test_handler_lets_bugs_through_with_their_traceback(fake_command, error):
    fake_command["error"] = error
    with pytest.raises(type(error)):
        main(["boom"])


def test_traceback_of_an_input_error_on_request(fake_command, monkeypatch):
    fake_command["error"] = InputError("bad")
    monkeypatch.setenv("GRADHARMONY_TRACEBACK", "1")
    with pytest.raises(InputError):
        main(["boom"])


def test_console_script_exit_status_and_single_line(tmp_path):
    # the real process: what a user sees on stderr and the status the shell gets
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for argv, status in [(["eval", "--run", "runs/nope"], 2), (["report", "runs/nope"], 2),
                         (["make-data", "synthetic", "--out", "D", "--clips", "0"], 2),
                         (["--version"], 0)]:
        p = subprocess.run([sys.executable, "-m", "gradharmony.cli", *argv], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == status, (argv, p.stderr)
        assert "Traceback" not in p.stderr
        assert len(p.stderr.splitlines()) == (1 if status else 0), p.stderr
    assert not any(tmp_path.iterdir())
