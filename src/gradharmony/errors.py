"""The one error type the command line answers with a single line: bad input, not a bug.

:class:`InputError` marks a mistake in what the user gave: an argument, a path it names, or
the content of a file it names (a run directory without a checkpoint, a split with one
class). ``gradharmony`` (:func:`gradharmony.cli.main`) prints it as one line,
``gradharmony <command>: <message>``, and exits with status 2; every other exception is a
bug and keeps its traceback (exit status 1).

Who raises it:

- command-line code, after checking an argument up front (before anything is written); the
  message names the argument and what was expected;
- library code that refuses an input it was handed (e.g. a checkpoint it will not load):
  raise :class:`InputError` or a subclass of it, naming the file;
- :func:`input_errors` turns the ``ValueError``/``OSError`` of a deliberate check or of
  reading a user's file into an :class:`InputError`; use it around those calls only, never
  around the work itself, so that a bug raising ``ValueError`` keeps its traceback.

:class:`InputError` is a ``ValueError``, so code that catches ``ValueError`` keeps working.

Example:
    >>> with input_errors("--data: "):
    ...     open("/nonexistent/shards.tar")
    Traceback (most recent call last):
    ...
    gradharmony.errors.InputError: --data: [Errno 2] No such file or directory: ...
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

#: the exit status of a usage or input error (argparse's own errors use it too)
EXIT_INPUT = 2


class InputError(ValueError):
    """The user's input is wrong; the message names the argument (or file) and what was
    expected.

    Example:
        >>> str(InputError("--clips: expected a positive number of clips, got 0"))
        '--clips: expected a positive number of clips, got 0'
    """


@contextmanager
def input_errors(prefix: str = "", types: tuple[type[BaseException], ...] = (ValueError, OSError)
                 ) -> Iterator[None]:
    """Re-raise the ``types`` raised inside the block as :class:`InputError` (``prefix`` +
    message); an :class:`InputError` passes through unchanged.

    Example:
        >>> with input_errors("--windows: "):
        ...     int("two")
        Traceback (most recent call last):
        ...
        gradharmony.errors.InputError: --windows: invalid literal for int() with base 10: 'two'
    """
    try:
        yield
    except InputError:
        raise
    except types as err:
        raise InputError(f"{prefix}{err}") from err


def one_line(message: object) -> str:
    """``message`` on one line: its lines joined by ``"; "``, blank lines dropped.

    Example:
        >>> one_line("bad value\\n  expected an int\\n")
        'bad value; expected an int'
    """
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines)
