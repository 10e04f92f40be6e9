"""Resumable experiments: named runs (a config plus overrides) trained, scored and summarised
into a document, each number beside the command that regenerates it.

:class:`Experiment` holds the machinery (folder check, skip/refuse/resume of runs and
scores); :mod:`gradharmony.experiment.evidence` is the first experiment built on it
(``gradharmony experiment evidence``); :mod:`gradharmony.experiment.study` runs the paper's
Tables 1 and 2 and the γ schedules (``gradharmony experiment table1|table2|gamma``), keeping
one small record per finished run (:mod:`gradharmony.experiment.records`) from which
:mod:`gradharmony.experiment.results` writes the results document.

Example:
    >>> from gradharmony.experiment import RunSpec
    >>> RunSpec("k4-seed0", ("seed=0", "data.candidates=4")).name
    'k4-seed0'
"""

from gradharmony.experiment.driver import Experiment, ExperimentError, RunSpec, ScoreSpec

__all__ = ["Experiment", "ExperimentError", "RunSpec", "ScoreSpec"]
