"""``gradharmony experiment NAME ...``: resumable experiments (see
:mod:`gradharmony.experiment`). Experiments: ``evidence``.

Example:
    >>> main([])
    usage: gradharmony experiment {evidence} [options]
    2
"""

from __future__ import annotations

import importlib

#: experiment name -> module with main(argv)
EXPERIMENTS = {"evidence": "gradharmony.experiment.evidence"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony experiment``."""
    argv = list(argv or [])
    if not argv or argv[0] not in EXPERIMENTS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"gradharmony experiment: unknown experiment {argv[0]!r}")
        print(f"usage: gradharmony experiment {{{','.join(EXPERIMENTS)}}} [options]")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return int(importlib.import_module(EXPERIMENTS[argv[0]]).main(argv[1:]) or 0)
