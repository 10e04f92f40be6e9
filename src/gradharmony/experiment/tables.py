"""The runs of the paper's Table 1 on the study preset: which methods, seeds and data.

Every run is ``configs/study.yaml`` (the study budget: 200 steps, sample granularity, a cosine
per triplet logged every step) on the ``study`` preset's noisy training data, with one method
and one seed; ``both`` is also run at ``batch`` granularity (the paper's Algorithm 1 as
written), ``small-loss`` (CL's drop count, the highest-loss triplets) is the loss-signal
control of CL, and ``baseline`` on the paired clean data is the ceiling. Runs are ordered seed by
seed, so that a study stopped half-way holds every method at the first seeds.

Data layout (``DATA``, default ``data/study``): ``DATA/noisy`` is ``gradharmony make-data
synthetic --preset study --seed 0``, ``DATA/clean`` is ``--preset clean --neighbors random
--seed 0`` (the same videos; only narrations, sounds and candidate bags differ).

Example:
    >>> specs = table1_runs(seeds=(0,))
    >>> [s.name for s in specs][:3], len(specs)
    (['baseline-s0', 'rw-va-s0', 'rw-vt-s0'], 10)
    >>> table1_runs(seeds=(0,))[-2].overrides[:2]
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
    granularity, ``baseline`` on clean data, ``small-loss`` (beyond the paper). The
    experiment's base overrides are ``data_overrides(data, "noisy")``; the clean run
    overrides them."""
    specs = []
    for seed in seeds:
        specs += [RunSpec(f"{m}-s{seed}", (f"method={m}", f"seed={seed}"))
                  for m in TABLE1_METHODS]
        specs.append(RunSpec(f"both-batch-s{seed}",
                             ("method=both", f"seed={seed}", "granularity=batch")))
        specs.append(RunSpec(f"clean-baseline-s{seed}",
                             ("method=baseline", f"seed={seed}", *data_overrides(data, "clean"))))
        specs.append(RunSpec(f"small-loss-s{seed}", ("method=small-loss", f"seed={seed}")))
    return specs


#: the methods of Table 2 (the noisier settings)
TABLE2_METHODS = ("baseline", "gr", "cl", "both")
#: Table 2 data settings, from the least to the most noisy: ``noisy`` is Table 1's runs
#: (HowTo100M-like), ``mix`` adds a text-free sound set (+ AudioSet), ``wild`` adds a wilder
#: narrated set on top (+ YT8M)
TABLE2_SETTINGS = ("noisy", "mix", "wild")
#: the data folders of every table under ``DATA`` -> ``gradharmony make-data synthetic``
#: options (besides ``--out DATA/FOLDER``)
DATA_RECIPES = {
    "noisy": "--seed 0 --preset study",
    "clean": "--seed 0 --preset clean --neighbors random",
    "sound": "--seed 1 --preset clean --neighbors random",
    "wild": "--seed 2 --preset wild --other-object-share 0.6 --neighbors random",
}


def make_data_commands(data: str = DEFAULT_DATA, folders=tuple(DATA_RECIPES)) -> list[str]:
    """The ``gradharmony make-data`` commands that create the data ``folders`` of ``DATA``.

    Example:
        >>> print(make_data_commands("D", ("sound",))[0])
        gradharmony make-data synthetic --out D/sound --seed 1 --preset clean --neighbors random
    """
    return [f"gradharmony make-data synthetic --out {data}/{f} {DATA_RECIPES[f]}"
            for f in folders]


def mixture_override(data: str, setting: str) -> str:
    """The ``data.mixture`` override of a Table 2 setting (``mix`` or ``wild``): Table 1's
    noisy narrated set, the text-free sound set (``has_text: false``: it feeds the
    video-audio loss only) and, for ``wild``, the wilder narrated set, equal weights.

    Example:
        >>> print(mixture_override("D", "mix").replace("}, ", "},\\n"))
        data.mixture=[{shards: D/noisy/train, weight: 1.0, has_text: true},
        {shards: D/sound/train, weight: 1.0, has_text: false}]
    """
    if setting not in ("mix", "wild"):
        raise ValueError(f"setting: expected 'mix' or 'wild', got {setting!r}")
    sets = [f"{{shards: {data}/noisy/train, weight: 1.0, has_text: true}}",
            f"{{shards: {data}/sound/train, weight: 1.0, has_text: false}}"]
    if setting == "wild":
        sets.append(f"{{shards: {data}/wild/train, weight: 1.0, has_text: true}}")
    return f"data.mixture=[{', '.join(sets)}]"


def table2_runs(data: str = DEFAULT_DATA, seeds=SEEDS) -> list[RunSpec]:
    """The runs of Table 2 beyond Table 1 (whose ``noisy`` runs are its first setting), seed
    by seed: every Table 2 method on the ``mix`` and ``wild`` settings (sample granularity).
    Run names: ``SETTING-METHOD-sSEED``.

    Example:
        >>> [s.name for s in table2_runs("D", seeds=(0,))][:5]
        ['mix-baseline-s0', 'mix-gr-s0', 'mix-cl-s0', 'mix-both-s0', 'wild-baseline-s0']
    """
    return [RunSpec(f"{setting}-{m}-s{seed}",
                    (f"method={m}", f"seed={seed}", mixture_override(data, setting)))
            for seed in seeds for setting in TABLE2_SETTINGS[1:] for m in TABLE2_METHODS]


def gamma_runs(seeds=SEEDS) -> list[RunSpec]:
    """The γ-schedule runs: ``cl`` with (γ0, γ_end) = (0, 0), named ``cl-g0-sSEED``; the
    schedule (−0.3, 0) is Table 1's ``cl`` (the study config's default).

    Example:
        >>> gamma_runs(seeds=(0,))[0]
        RunSpec(name='cl-g0-s0', overrides=('method=cl', 'seed=0', 'gamma0=0.0', 'gamma_end=0.0'))
    """
    return [RunSpec(f"cl-g0-s{seed}", ("method=cl", f"seed={seed}", "gamma0=0.0",
                                         "gamma_end=0.0")) for seed in seeds]


#: the methods of Table 3 (the modality-specific backbone: one transformer per modality)
TABLE3_METHODS = ("baseline", "gr")


def table3_runs(seeds=SEEDS) -> list[RunSpec]:
    """The runs of Table 3: the modality-specific model (``model.modality_agnostic=false``)
    with and without ``gr`` on the noisy data, named ``ms-METHOD-sSEED``.

    Example:
        >>> [s.name for s in table3_runs(seeds=(0,))], table3_runs(seeds=(0,))[1].overrides
        (['ms-baseline-s0', 'ms-gr-s0'], ('method=gr', 'seed=0', 'model.modality_agnostic=false'))
    """
    return [RunSpec(f"ms-{m}-s{seed}", (f"method={m}", f"seed={seed}",
                                         "model.modality_agnostic=false"))
            for seed in seeds for m in TABLE3_METHODS]


def run_row(name: str) -> str:
    """The table row of a run: its name without the seed suffix.

    Example:
        >>> run_row("both-batch-s2"), run_row("mix-gr-s0")
        ('both-batch', 'mix-gr')
    """
    head, sep, seed = name.rpartition("-s")
    return head if sep and seed.isdigit() else name


def run_setting(name: str) -> str:
    """The data setting of a run: ``clean``, ``mix``, ``wild`` or ``noisy``.

    Example:
        >>> run_setting("clean-baseline-s0"), run_setting("gr-s1"), run_setting("wild-cl-s0")
        ('clean', 'noisy', 'wild')
    """
    first = name.split("-", 1)[0]
    return first if first in ("clean", "mix", "wild") else "noisy"
