"""The ``gradharmony`` command line: a thin dispatcher to each package's own ``main(argv)``.

Each sub-command lives next to the code it drives and is imported only when invoked, so
``gradharmony --help`` stays fast and a broken optional piece cannot break the others.

Errors, in one place. Every command parses its arguments with :class:`Parser`, so a usage
error (unknown option, malformed value, missing argument) is one line on stderr and exit
status 2, and ``key=value`` overrides may come anywhere on the line. A mistake found after
parsing (a missing run directory, a split with one class, a checkpoint refused) is raised as
:class:`gradharmony.errors.InputError` and printed here by :func:`main` as one line,
``gradharmony <command>: <message>``, exit status 2. Any other exception is a bug: it keeps
its traceback (exit status 1). ``GRADHARMONY_TRACEBACK=1`` shows the traceback of an input
error too (to see where a message came from).

Exit status: 0 success; 1 a bug (with traceback) or a run that could not finish (``pretrain``
stopped on repeated non-finite losses, ``make-shards``/``build-vocab`` found nothing to
write); 2 a usage or input error (one line; options, values and paths are checked before
anything is written).

Example:
    >>> from gradharmony.cli import COMMANDS
    >>> "pretrain" in COMMANDS and "make-data" in COMMANDS
    True
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from gradharmony.errors import EXIT_INPUT, InputError, one_line

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


class Parser(argparse.ArgumentParser):
    """The ``argparse`` parser of every ``gradharmony`` command.

    Two differences from ``argparse.ArgumentParser``: a usage error is a single line
    ``PROG: MESSAGE (see PROG --help)`` with exit status 2 (instead of the usage block plus
    the message), and :meth:`parse_args` is ``parse_intermixed_args``, so positionals such as
    ``key=value`` overrides may come before, between or after the options.

    Example:
        >>> p = Parser(prog="gradharmony x")
        >>> _ = p.add_argument("--quiet", action="store_true")
        >>> _ = p.add_argument("overrides", nargs="*")
        >>> p.parse_args(["a=1", "--quiet", "b=2"])
        Namespace(quiet=True, overrides=['a=1', 'b=2'])
    """

    def error(self, message: str):
        self.exit(EXIT_INPUT, f"{self.prog}: {one_line(message)} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def at_least(low: float, kind: type = int):
    """An argparse ``type``: a ``kind`` (int or float) >= ``low``; anything else is a usage
    error naming the option.

    Example:
        >>> at_least(1)("3"), at_least(0.0, float)("0.5")
        (3, 0.5)
        >>> at_least(1)("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: expected an integer >= 1, got '0'
    """
    name = "an integer" if kind is int else "a number"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name} >= {low}, got {text!r}") from None
        if value != value or value < low:  # NaN fails too
            raise argparse.ArgumentTypeError(f"expected {name} >= {low}, got {text!r}")
        return value

    parse.__name__ = f"{kind.__name__} >= {low}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite float > 0.

    Example:
        >>> positive_float("3e-4")
        0.0003
    """
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def require(ok: bool, message: str) -> None:
    """Raise :class:`InputError` with ``message`` (naming the argument) unless ``ok``.

    Example:
        >>> require(2 > 1, "never raised")
    """
    if not ok:
        raise InputError(message)


def existing_dir(option: str, path: str | os.PathLike, expected: str = "a folder") -> Path:
    """``path`` as a ``Path`` when it is a directory, else an :class:`InputError` naming
    ``option`` and ``expected``.

    Example:
        >>> existing_dir("--run", "/nonexistent/run", "a run directory")
        Traceback (most recent call last):
        ...
        gradharmony.errors.InputError: --run '/nonexistent/run': no such folder (expected ...)
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{option} {str(p)!r}: no such folder (expected {expected})")
    if not p.is_dir():
        raise InputError(f"{option} {str(p)!r}: not a folder (expected {expected})")
    return p


def existing_file(option: str, path: str | os.PathLike, expected: str = "a file") -> Path:
    """``path`` as a ``Path`` when it is a file, else an :class:`InputError`.

    Example:
        >>> existing_file("--manifest", "/nonexistent.csv", "a CSV or JSONL caption manifest")
        Traceback (most recent call last):
        ...
        gradharmony.errors.InputError: --manifest '/nonexistent.csv': no such file (...)
    """
    p = Path(path)
    if not p.is_file():
        what = "a folder" if p.is_dir() else "no such file"
        raise InputError(f"{option} {str(p)!r}: {what} (expected {expected})")
    return p


def writable_path(option: str, path: str | os.PathLike, kind: str = "folder") -> Path:
    """``path`` as a ``Path`` when a ``kind`` (``"folder"`` or ``"file"``) can be written
    there: it is not an existing thing of the other kind, and its nearest existing parent is
    a writable folder. Checked before any work, so that nothing is computed in vain.

    Example:
        >>> import tempfile
        >>> f = tempfile.NamedTemporaryFile()
        >>> writable_path("--out", f.name + "/sub", "folder")
        Traceback (most recent call last):
        ...
        gradharmony.errors.InputError: --out '...': ... is a file, not a folder
    """
    p = Path(path)
    if p.exists():
        if kind == "folder" and not p.is_dir():
            raise InputError(f"{option} {str(p)!r}: is a file (expected a folder)")
        if kind == "file" and p.is_dir():
            raise InputError(f"{option} {str(p)!r}: is a folder (expected a file path)")
    parent = p if p.is_dir() else p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{option} {str(p)!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{option} {str(p)!r}: folder {str(parent)!r} is not writable")
    return p


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None or isinstance(exc.code, int):
        return int(exc.code or 0)
    print(exc.code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
    return 1


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: gradharmony <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run `gradharmony <command> --help` for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gradharmony`` console script; returns the exit status.

    Example:
        >>> main(["report", "/nonexistent/run"])
        2
    """
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
    try:
        return int(func(rest) or 0)
    except InputError as err:
        if os.environ.get("GRADHARMONY_TRACEBACK"):
            raise
        print(f"gradharmony {name}: {one_line(err)}", file=sys.stderr)
        return EXIT_INPUT
    except SystemExit as exc:  # argparse: --help (0) or a usage error, already printed
        return _exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
