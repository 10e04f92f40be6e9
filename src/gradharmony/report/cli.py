"""``gradharmony report RUN [RUN ...] [--out DIR]``: markdown report and PNG figures."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony report``."""
    from gradharmony.report.build import build_report

    p = argparse.ArgumentParser(prog="gradharmony report",
                                description="tables and figures comparing runs")
    p.add_argument("runs", nargs="+", help="run directories (several seeds of one "
                                           "configuration are averaged)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the run itself for one run, else ./report)")
    p.add_argument("--seed", type=int, default=0, help="t-SNE seed")
    args = p.parse_args(argv)
    out = args.out or (args.runs[0] if len(args.runs) == 1 else "report")
    path = build_report(args.runs, out, seed=args.seed)
    print(f"wrote {path}")
    return 0
