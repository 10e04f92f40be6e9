"""The ``gradharmony`` command line: a thin dispatcher to each package's own ``main(argv)``.

Each sub-command lives next to the code it drives and is imported only when invoked, so
``gradharmony --help`` stays fast and a broken optional piece cannot break the others.

Example:
    >>> from gradharmony.cli import COMMANDS
    >>> "pretrain" in COMMANDS and "make-data" in COMMANDS
    True
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("gradharmony.train.demo", "main",
             "make the synthetic data, pre-train, evaluate and report (the embedded default)"),
    "pretrain": ("gradharmony.train.cli", "main", "pre-train VATT with gradient harmonization"),
    "eval": ("gradharmony.evaluate.cli", "main_eval",
             "zero-shot retrieval, linear probes and fine-tuning of a run"),
    "score": ("gradharmony.evaluate.cli", "main_score",
              "per-triplet alignment scores of a data set (data curation)"),
    "report": ("gradharmony.report.cli", "main", "tables and figures comparing runs"),
    "experiment": ("gradharmony.experiment.cli", "main",
                   "resumable experiments: train, score and document (evidence)"),
    "make-data": ("gradharmony.data.cli_synthetic", "main",
                  "generate the synthetic tri-modal benchmark as shards"),
    "make-shards": ("gradharmony.data.cli", "main_make_shards",
                    "turn a folder of videos plus a caption manifest into shards"),
    "build-vocab": ("gradharmony.data.cli", "main_build_vocab",
                    "build the narration vocabulary from training shards"),
    "train-av": ("gradharmony.balance.cli", "main",
                 "balanced audio-visual classification (OGM-GE, G-Blend, Modality-Drop)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: gradharmony <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `gradharmony <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradharmony`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from gradharmony import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"gradharmony: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
