"""The runs of the paper's Table 1 on the study preset: which methods, seeds and data.

Every run is ``configs/study.yaml`` (the study budget: 200 steps, sample granularity, a cosine
per triplet logged every step) on the ``study`` preset's noisy training data, with one method
and one seed; ``both`` is also run at ``batch`` granularity (the paper's Algorithm 1 as
written), and ``baseline`` on the paired clean data is the ceiling. Runs are ordered seed by
seed, so that a study stopped half-way holds every method at the first seeds.

Data layout (``DATA``, default ``data/study``): ``DATA/noisy`` is ``gradharmony make-data
synthetic --preset study --seed 0``, ``DATA/clean`` is ``--preset clean --neighbors random
--seed 0`` (the same videos; only narrations, sounds and candidate bags differ).

Example:
    >>> specs = table1_runs(seeds=(0,))
    >>> [s.name for s in specs][:3], len(specs)
    (['baseline-s0', 'rw-va-s0', 'rw-vt-s0'], 9)
    >>> table1_runs(seeds=(0,))[-1].overrides[:2]
    ('method=baseline', 'seed=0')
"""

from __future__ import annotations

from gradharmony.experiment.driver import RunSpec

#: the methods of Table 1, trained at sample granularity on the noisy data
TABLE1_METHODS = ("baseline", "rw-va", "rw-vt", "gr", "gradvac", "cl", "both")
#: training seeds of every row
SEEDS = (0, 1, 2)
STUDY_CONFIG = "configs/study.yaml"
DEFAULT_DATA = "data/study"


def data_overrides(data: str, condition: str) -> tuple[str, str]:
    """The config overrides that train on ``DATA/condition`` (``noisy`` or ``clean``).

    Example:
        >>> data_overrides("data/study", "clean")
        ('data.mixture.0.shards=data/study/clean/train', 'data.cache_dir=data/study/clean/cache')
    """
    return (f"data.mixture.0.shards={data}/{condition}/train",
            f"data.cache_dir={data}/{condition}/cache")


def table1_runs(data: str = DEFAULT_DATA, seeds=SEEDS) -> list[RunSpec]:
    """The runs of Table 1, seed by seed: every method (sample granularity), ``both`` at batch
    granularity, ``baseline`` on clean data. The experiment's base overrides are
    ``data_overrides(data, "noisy")``; the clean run overrides them."""
    specs = []
    for seed in seeds:
        specs += [RunSpec(f"{m}-s{seed}", (f"method={m}", f"seed={seed}"))
                  for m in TABLE1_METHODS]
        specs.append(RunSpec(f"both-batch-s{seed}",
                             ("method=both", f"seed={seed}", "granularity=batch")))
        specs.append(RunSpec(f"clean-baseline-s{seed}",
                             ("method=baseline", f"seed={seed}", *data_overrides(data, "clean"))))
    return specs
