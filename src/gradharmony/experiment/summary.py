"""Numbers over records: a metric per run, per row (seeds), and a row's paired difference to
its baseline row.

Rows are run names without their seed suffix (``gr-s0`` → ``gr``). The baseline row of
``mix-gr`` is ``mix-baseline``; of every other row it is Table 1's ``baseline``.

Example:
    >>> recs = [fake_record("baseline-s0", r10=10.0), fake_record("gr-s0", r10=12.0)]
    >>> by = by_name(recs)
    >>> row_values(by, "gr", "R@10"), diff(by, "gr", "R@10")["mean"]
    ({0: 12.0}, 2.0)
"""

from __future__ import annotations

import math

from gradharmony.experiment.stats import excludes_zero, mean_std, paired_interval
from gradharmony.experiment.tables import run_row, run_setting

#: metric name -> (path into the record's ``eval``, +1 when larger is better)
METRICS: dict[str, tuple[tuple[str, ...], int]] = {
    "V→T R@1": (("retrieval", "video_to_text", "R@1"), 1),
    "V→T R@5": (("retrieval", "video_to_text", "R@5"), 1),
    "V→T R@10": (("retrieval", "video_to_text", "R@10"), 1),
    "V→T MedR": (("retrieval", "video_to_text", "MedR"), -1),
    "T→V R@1": (("retrieval", "text_to_video", "R@1"), 1),
    "T→V R@5": (("retrieval", "text_to_video", "R@5"), 1),
    "T→V R@10": (("retrieval", "text_to_video", "R@10"), 1),
    "T→V MedR": (("retrieval", "text_to_video", "MedR"), -1),
    "video probe top-1": (("probe", "video_action", "top1"), 1),
    "audio probe top-1": (("probe", "audio_sound", "top1"), 1),
    "video fine-tune top-1": (("finetune", "video_action", "top1"), 1),
    "audio fine-tune top-1": (("finetune", "audio_sound", "top1"), 1),
}
#: the metrics of every run (fine-tuning: only the rows asked for)
RUN_METRICS = tuple(k for k in METRICS if "fine-tune" not in k)
FINETUNE_METRICS = ("video fine-tune top-1", "audio fine-tune top-1")
#: derived metrics: the mean of the two retrieval directions
DERIVED = {"R@10": ("V→T R@10", "T→V R@10"), "MedR": ("V→T MedR", "T→V MedR")}
DIRECTION = {**{k: v[1] for k, v in METRICS.items()}, "R@10": 1, "MedR": -1,
             "mean cosine": 1}


def metric(record: dict, name: str) -> float:
    """A metric of one record (``nan`` when the record lacks it); ``R@10`` and ``MedR`` are
    the means of both directions, ``mean cosine`` the mean logged per-triplet cosine.

    Example:
        >>> metric(fake_record("a-s0", r10=4.0), "R@10"), metric({"eval": {}}, "MedR")
        (4.0, nan)
    """
    if name in DERIVED:
        a, b = (metric(record, n) for n in DERIVED[name])
        return (a + b) / 2
    if name == "mean cosine":
        st = record.get("cosine", {}).get("stages", [])
        n = sum(s["n"] for s in st)
        return sum(s["mean"] * s["n"] for s in st if s["n"]) / n if n else float("nan")
    node = record.get("eval", {})
    for k in METRICS[name][0]:
        if not isinstance(node, dict) or k not in node:
            return float("nan")
        node = node[k]
    return float(node) if node is not None else float("nan")


def compact_names(names) -> str:
    """Run names grouped by row, in order of first appearance.

    Example:
        >>> compact_names(["gr-s0", "cl-s0", "gr-s1", "x"])
        'gr-s{0,1}, cl-s0, x'
    """
    groups: dict[str, list[str]] = {}
    for n in names:
        row = run_row(n)
        groups.setdefault(row, []).append(n[len(row) + 2:] if row != n else "")
    parts = []
    for row, seeds in groups.items():
        seeds = [s for s in seeds if s]
        if not seeds:
            parts.append(row)
        else:
            parts.append(f"{row}-s{seeds[0]}" if len(seeds) == 1
                         else f"{row}-s{{{','.join(seeds)}}}")
    return ", ".join(parts)


def by_name(records: list[dict]) -> dict[str, dict]:
    """Records keyed by run name."""
    return {r["run"]: r for r in records}


def row_values(by: dict[str, dict], row: str, name: str) -> dict[int, float]:
    """``{seed: value}`` of a row's runs that have the metric."""
    out = {}
    for run, rec in by.items():
        if run_row(run) == row:
            v = metric(rec, name)
            if not math.isnan(v):
                out[int(rec["seed"])] = v
    return dict(sorted(out.items()))


def baseline_row(row: str) -> str:
    """The row ``row`` is compared with.

    Example:
        >>> baseline_row("mix-cl"), baseline_row("cl-g0"), baseline_row("ms-gr")
        ('mix-baseline', 'baseline', 'ms-baseline')
    """
    if row.startswith("ms-") and row != "ms-baseline":
        return "ms-baseline"  # the modality-specific model against its own baseline
    setting = run_setting(row + "-s0")
    return f"{setting}-baseline" if setting in ("mix", "wild") else "baseline"


def diff(by: dict[str, dict], row: str, name: str, base: str | None = None) -> dict:
    """``row − base`` (default :func:`baseline_row`) over the seeds both have: ``mean``,
    ``low``/``high`` (paired 95 % t-interval), ``n`` pairs, ``sign`` (+1 / −1 when the
    interval excludes 0 above / below, else 0) and ``better`` (the sign in the metric's
    good direction)."""
    a, b = row_values(by, row, name), row_values(by, base or baseline_row(row), name)
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    m, _ = mean_std(d)
    lo, hi = paired_interval([a[s] for s in seeds], [b[s] for s in seeds])
    sign = excludes_zero((lo, hi))
    return {"mean": m, "low": lo, "high": hi, "n": len(seeds), "sign": sign,
            "better": sign * DIRECTION.get(name, 1), "seeds": seeds}


def fake_record(run: str, r10: float = 10.0, medr: float = 50.0, probe: float = 30.0,
                cos: float = 0.1, seed: int | None = None, auroc: float = 0.6) -> dict:
    """A minimal record (for examples and tests of the document): the same value in both
    retrieval directions and both probes.

    Example:
        >>> fake_record("gr-s1")["seed"]
        1
    """
    ret = {"R@1": r10 / 4, "R@5": r10 / 2, "R@10": r10, "MedR": medr}
    stage = {"steps": [0, 9], "n": 10, "mean": cos, "std": 0.1, "hist": [0] * 78 + [5, 5],
             "quantiles": {}, "kept_frac": 0.9, "nonfinite": 0, "under": 0, "over": 0}
    conj = {"text_misaligned": {"cos": [auroc, auroc - .05, auroc + .05],
                                "loss_vt": [0.5, 0.45, 0.55], "n": 10}}
    return {"format": 1, "run": run, "row": run_row(run), "setting": run_setting(run),
            "seed": int(run.rpartition("-s")[2]) if seed is None else seed,
            "eval": {"retrieval": {"video_to_text": dict(ret), "text_to_video": dict(ret)},
                     "probe": {"video_action": {"top1": probe}, "audio_sound": {"top1": probe}}},
            "cosine": {"bins": [-0.4, 0.4, 80], "stages": [stage, {**stage, "steps": [10, 19]}]},
            "conjecture": [{"steps": [0, 9], "n": 10, "auroc": conj},
                           {"steps": [10, 19], "n": 10, "auroc": conj}]}
