"""``gradharmony experiment NAME ...``: resumable experiments (see
:mod:`gradharmony.experiment`). Experiments: ``evidence``, ``table1``, ``table2``, ``gamma``,
``table3``.

Example:
    >>> main(["--help"])
    usage: gradharmony experiment {evidence,table1,table2,gamma,table3} [options]
    0
    >>> main(["nosuch"])
    Traceback (most recent call last):
    ...
    gradharmony.errors.InputError: unknown experiment 'nosuch'; choose from: evidence, ...
"""

from __future__ import annotations

import importlib

from gradharmony.errors import InputError

#: experiment name -> module with main(argv), or module:function
EXPERIMENTS = {"evidence": "gradharmony.experiment.evidence",
               "table1": "gradharmony.experiment.study:main_table1",
               "table2": "gradharmony.experiment.study:main_table2",
               "gamma": "gradharmony.experiment.study:main_gamma",
               "table3": "gradharmony.experiment.study:main_table3"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony experiment``."""
    argv = list(argv or [])
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: gradharmony experiment {{{','.join(EXPERIMENTS)}}} [options]")
        return 0
    if not argv:
        raise InputError(f"expected an experiment name; choose from: {', '.join(EXPERIMENTS)}")
    if argv[0] not in EXPERIMENTS:
        raise InputError(f"unknown experiment {argv[0]!r}; choose from: {', '.join(EXPERIMENTS)}")
    module, _, func = EXPERIMENTS[argv[0]].partition(":")
    return int(getattr(importlib.import_module(module), func or "main")(argv[1:]) or 0)
