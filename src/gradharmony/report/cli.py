"""``gradharmony report RUN [RUN ...] [--out DIR]``: markdown report and PNG figures.

Every run directory is checked (a folder holding ``config.yaml``, its files readable) before
anything is written.
"""

from __future__ import annotations

from gradharmony.cli import Parser, existing_dir, require, writable_path
from gradharmony.errors import input_errors


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony report``."""
    p = Parser(prog="gradharmony report", description="tables and figures comparing runs")
    p.add_argument("runs", nargs="+", help="run directories (several seeds of one "
                                           "configuration are averaged)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the run itself for one run, else ./report)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    args = p.parse_args(argv)
    import yaml

    from gradharmony.report.build import build_report
    from gradharmony.report.runs import read_run

    for run in args.runs:
        d = existing_dir("run", run, "a run directory written by `gradharmony pretrain`")
        require((d / "config.yaml").is_file(),
                f"run {run!r}: no config.yaml (expected a run directory written by "
                "`gradharmony pretrain`)")
        with input_errors(f"run {run!r}: ", (ValueError, OSError, yaml.YAMLError)):
            read_run(d)  # every file of every run readable before anything is written
    out = args.out or (args.runs[0] if len(args.runs) == 1 else "report")
    writable_path("--out", out, "folder")

    path = build_report(args.runs, out, seed=args.seed)
    print(f"wrote {path}")
    return 0
