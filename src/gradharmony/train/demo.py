"""``gradharmony demo`` (= ``make demo``): the embedded default, end to end, on a CPU.

1. generate the synthetic benchmark into ``data/synthetic`` (skipped when it is there);
2. build the narration vocabulary from its training shards (skipped when present);
3. pre-train ``configs/demo.yaml`` (method ``both``) into ``runs/demo`` (a finished run is
   kept; an interrupted one is resumed);
4. evaluate it (zero-shot retrieval and linear probes on the clean splits) and
5. write ``runs/demo/report.md`` with its figures.

Every stage is one of the package's own commands, run in this process, so the demo is also
the worked example of the command line. Extra ``key=value`` arguments go to ``pretrain``.

Example:
    >>> plan(["--data", "d", "--runs", "r", "steps=5"])[2][:4]  # doctest: +NORMALIZE_WHITESPACE
    ['pretrain', '--config', ...]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from gradharmony.cli import Parser, at_least, require, writable_path

REPO = Path(__file__).resolve().parents[3]


def _config_path() -> Path:
    local = Path("configs/demo.yaml")
    return local if local.is_file() else REPO / "configs" / "demo.yaml"


def _parser() -> Parser:
    p = Parser(
        prog="gradharmony demo",
        description="Generate the synthetic data, pre-train with gradient harmonization "
                    "(configs/demo.yaml), evaluate and write runs/demo/report.md.")
    p.add_argument("--data", default="data/synthetic", help="synthetic data folder")
    p.add_argument("--runs", default="runs", help="folder of run directories")
    p.add_argument("--name", default="demo", help="run name")
    p.add_argument("--clips", type=at_least(1), default=None,
                   help="training clips to generate (default: the generator's)")
    p.add_argument("--tasks", default="retrieval,probe", help="evaluation tasks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="pretrain overrides, e.g. steps=100 method=gr")
    return p


def plan(argv: list[str]) -> list[list[str]]:
    """The ``gradharmony`` commands the demo runs, in order (stages already done included)."""
    a = _parser().parse_args(argv)
    data, run = Path(a.data), Path(a.runs) / a.name
    quiet = ["--quiet"] if a.quiet else []
    gen = ["make-data", "synthetic", "--out", str(data), "--seed", "0", *quiet]
    if a.clips is not None:
        gen += ["--clips", str(a.clips)]
    vocab = ["build-vocab", "--shards", str(data / "train" / "*.tar"), "--out",
             str(data / "vocab.json"), *([] if not a.quiet else ["--quiet"])]
    train = ["pretrain", "--config", str(_config_path()), *quiet,
             f"name={a.name}", f"run_dir={a.runs}", f"data.vocab={data / 'vocab.json'}",
             f"data.mixture=[{{shards: {data / 'train'}, weight: 1.0, has_text: true}}]",
             f"data.cache_dir={data / 'cache'}", "resume=true", *a.overrides]
    evaluate = ["eval", "--run", str(run), "--data", str(data), "--tasks", a.tasks, *quiet]
    report = ["report", str(run)]
    return [gen, vocab, train, evaluate, report]


def _check(a) -> None:
    """The demo's own arguments, checked before the first stage: a bad override or task would
    otherwise surface only after the data set was generated."""
    from gradharmony.errors import InputError
    from gradharmony.evaluate.cli import TASKS
    from gradharmony.train.config import ConfigError, load_config

    writable_path("--data", a.data, "folder")
    writable_path("--runs", a.runs, "folder")
    require(bool(a.name) and "/" not in a.name, f"--name: expected a run name without '/', "
            f"got {a.name!r}")
    tasks = [t.strip() for t in a.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    require(not bad and bool(tasks),
            f"--tasks: unknown {bad or 'empty list'}; choose from {', '.join(TASKS)}")
    try:
        load_config(_config_path(), a.overrides, check=False)
    except ConfigError as err:
        raise InputError(f"config error: {err}") from err


def _finished(run: Path) -> bool:
    """Whether ``run`` holds a checkpoint of its last step (read as data only: a checkpoint
    or config that would need more raises :class:`~gradharmony.train.runfiles.RunFileError`)."""
    from gradharmony.train.checkpoint import latest_checkpoint, load_checkpoint
    from gradharmony.train.runfiles import RunFileError, read_config

    path = latest_checkpoint(run / "checkpoints")
    if path is None or not (run / "config.yaml").is_file():
        return False
    steps = read_config(run / "config.yaml").get("steps")
    step = load_checkpoint(path).get("step")
    for name, value in (("config.yaml steps", steps), (f"{path} step", step)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RunFileError(f"{run}: {name} is {value!r}, expected an integer")
    return step >= steps


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony demo``."""
    from gradharmony.cli import main as gradharmony

    argv = list(sys.argv[1:] if argv is None else argv)
    a = _parser().parse_args(argv)
    _check(a)
    data, run = Path(a.data), Path(a.runs) / a.name
    gen, vocab, train, evaluate, report = plan(argv)
    stages = [("synthetic data", gen, (data / "info.json").is_file()),
              ("vocabulary", vocab, (data / "vocab.json").is_file()),
              ("pre-training", train, _finished(run) and not a.overrides),
              ("evaluation", evaluate, False),
              ("report", report, False)]
    t0 = time.perf_counter()
    for i, (title, cmd, done) in enumerate(stages, 1):
        if done:
            print(f"[demo {i}/5] {title}: already there, skipped", file=sys.stderr)
            continue
        print(f"[demo {i}/5] {title}: gradharmony {' '.join(cmd)}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        rc = gradharmony(cmd)
        if rc:
            print(f"gradharmony demo: stage '{title}' failed (exit {rc})", file=sys.stderr)
            return rc
        print(f"[demo {i}/5] {title}: {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"gradharmony demo: done in {time.perf_counter() - t0:.0f} s; see "
          f"{run / 'report.md'}", file=sys.stderr)
    return 0
