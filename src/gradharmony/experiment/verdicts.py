"""A verdict per claim of the paper, computed from the records.

Every comparison is a paired difference over seeds with its 95 % t-interval
(:func:`gradharmony.experiment.summary.diff`). A comparison is *better* / *worse* when the
interval excludes 0 in the metric's good / bad direction, else *unresolved*. Retrieval is
``R@10`` (the mean of V→T and T→V R@10). Verdicts:

1. GR, CL and Both each improve retrieval over the baseline, Both most: holds when all three
   are better and Both's mean difference is the largest; does not hold when one is worse, or
   all three are better but Both's is not the largest.
2. Re-weighting helps little or hurts: does not hold when an RW row is better; holds when
   each RW row is worse, or its interval's upper end lies below the smallest mean gain of the
   GR/CL/Both rows that are better.
3. CL helps the uni-modal probes: holds when CL is better on both probes (video and audio
   top-1), does not hold when it is worse on one.
4. The gain grows with noisier data: for each of GR, CL, Both the per-seed gain over the
   setting's baseline on ``wild`` minus the gain on ``noisy``; holds when all three are
   above 0, does not hold when one is below 0.
5. γ (−0.3, 0) beats (0, 0), and (0, 0) collapses: holds when ``cl`` is better than
   ``cl-g0`` at retrieval and ``cl-g0`` is worse than the baseline on the video probe; does
   not hold when ``cl`` is worse than ``cl-g0`` or ``cl-g0`` better than the baseline there.
6. The mean logged cosine is lower on noisier data: the baseline's mean cosine on ``wild``
   minus on ``noisy``; holds when below 0, does not hold when above 0.

Anything else is "not resolved at this scale"; a claim whose runs have no record is "not
resolved: runs missing (...)".

Example:
    >>> v = verdicts([], {"table1": ["gr-s0"], "table2": [], "gamma": []})
    >>> v[0]["status"]
    'not resolved: runs missing (gr-s0)'
"""

from __future__ import annotations

import math

from gradharmony.experiment.stats import excludes_zero, mean_std, paired_interval
from gradharmony.experiment.summary import by_name, compact_names, diff, row_values
from gradharmony.experiment.tables import run_row

HOLDS, FAILS, OPEN = "holds", "does not hold", "not resolved at this scale"
CLAIMS = {
    1: "GR and CL each improve zero-shot retrieval markedly over the baseline, Both most",
    2: "re-weighting (RW-VA, RW-VT) helps little or hurts",
    3: "CL also helps the uni-modal tasks (video and audio probes)",
    4: "the gain grows with noisier data",
    5: "γ schedule (−0.3, 0) is best; (0, 0) collapses training",
    6: "the mean cross-modal cosine is lower on the noisier data",
}
#: the rows each claim needs
NEEDS = {1: ("baseline", "gr", "cl", "both"), 2: ("baseline", "rw-va", "rw-vt", "gr", "cl",
                                                   "both"),
         3: ("baseline", "cl"),
         4: ("baseline", "gr", "cl", "both", "wild-baseline", "wild-gr", "wild-cl", "wild-both"),
         5: ("baseline", "cl", "cl-g0"), 6: ("baseline", "wild-baseline")}


def fmt_diff(d: dict, digits: int = 2) -> str:
    """``+1.23 [−0.50, +2.96] (n=3)``.

    Example:
        >>> fmt_diff({"mean": 1.0, "low": -0.5, "high": 2.5, "n": 3})
        '+1.00 [-0.50, +2.50] (n=3)'
    """
    if d["n"] == 0 or math.isnan(d["mean"]):
        return "– (no paired seeds)"
    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f} (n={d['n']}, no interval)"
    return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}] " \
           f"(n={d['n']})"


def _word(d: dict) -> str:
    return {1: "better", -1: "worse", 0: "unresolved"}[d["better"]]


def _claim1(by) -> tuple[str, str]:
    ds = {r: diff(by, r, "R@10") for r in ("gr", "cl", "both")}
    text = "; ".join(f"{r} − baseline R@10 {fmt_diff(d)} {_word(d)}" for r, d in ds.items())
    if any(d["better"] < 0 for d in ds.values()):
        return FAILS, text
    if all(d["better"] > 0 for d in ds.values()):
        top = max(ds, key=lambda r: ds[r]["mean"])
        return (HOLDS, text) if top == "both" else (FAILS, text + f"; largest gain: {top}")
    return OPEN, text


def _claim2(by) -> tuple[str, str]:
    rw = {r: diff(by, r, "R@10") for r in ("rw-va", "rw-vt")}
    gains = [d["mean"] for d in (diff(by, r, "R@10") for r in ("gr", "cl", "both"))
             if d["better"] > 0]
    text = "; ".join(f"{r} − baseline R@10 {fmt_diff(d)} {_word(d)}" for r, d in rw.items())
    if gains:
        text += f"; smallest significant GR/CL/Both gain {min(gains):+.2f}"
    if any(d["better"] > 0 for d in rw.values()):
        return FAILS, text
    little = all(d["better"] < 0 or (gains and d["high"] < min(gains)) for d in rw.values())
    return (HOLDS if little else OPEN), text


def _claim3(by) -> tuple[str, str]:
    ds = {m: diff(by, "cl", m) for m in ("video probe top-1", "audio probe top-1")}
    text = "; ".join(f"cl − baseline {m} {fmt_diff(d)} {_word(d)}" for m, d in ds.items())
    if any(d["better"] < 0 for d in ds.values()):
        return FAILS, text
    return (HOLDS if all(d["better"] > 0 for d in ds.values()) else OPEN), text


def gain_growth(by, method: str, setting: str = "wild", name: str = "R@10") -> dict:
    """Per seed, (``SETTING-METHOD`` − ``SETTING-baseline``) − (``METHOD`` − ``baseline``):
    the mean and paired 95 % interval over the seeds all four rows have."""
    rows = [row_values(by, r, name) for r in (f"{setting}-{method}", f"{setting}-baseline",
                                                method, "baseline")]
    seeds = sorted(set.intersection(*(set(r) for r in rows)))
    g = [(rows[0][s] - rows[1][s]) - (rows[2][s] - rows[3][s]) for s in seeds]
    m, _ = mean_std(g)
    lo, hi = paired_interval(g, [0.0] * len(g))
    return {"mean": m, "low": lo, "high": hi, "n": len(seeds), "sign": excludes_zero((lo, hi)),
            "better": excludes_zero((lo, hi)), "seeds": seeds}


def _claim4(by) -> tuple[str, str]:
    ds = {m: gain_growth(by, m) for m in ("gr", "cl", "both")}
    text = "; ".join(f"{m}: gain on wild − gain on noisy (R@10) {fmt_diff(d)}"
                     for m, d in ds.items())
    if any(d["sign"] < 0 for d in ds.values()):
        return FAILS, text
    return (HOLDS if all(d["sign"] > 0 for d in ds.values()) else OPEN), text


def _claim5(by) -> tuple[str, str]:
    best = diff(by, "cl", "R@10", base="cl-g0")
    collapse = diff(by, "cl-g0", "video probe top-1")
    text = (f"cl (−0.3, 0) − cl-g0 (0, 0) R@10 {fmt_diff(best)} {_word(best)}; cl-g0 − "
            f"baseline video probe top-1 {fmt_diff(collapse)} {_word(collapse)}")
    if best["better"] < 0 or collapse["better"] > 0:
        return FAILS, text
    return (HOLDS if best["better"] > 0 and collapse["better"] < 0 else OPEN), text


def _claim6(by) -> tuple[str, str]:
    d = diff(by, "wild-baseline", "mean cosine", base="baseline")
    base = row_values(by, "baseline", "mean cosine")
    rel = ""
    if base and not math.isnan(d["mean"]):
        b = sum(base.values()) / len(base)
        rel = f" ({d['mean'] / abs(b):+.0%} of the noisy mean {b:+.4f})" if b else ""
    text = f"baseline mean cosine, wild − noisy {fmt_diff(d, 4)}{rel}"
    return {-1: HOLDS, 1: FAILS, 0: OPEN}[d["sign"]], text


RULES = {1: _claim1, 2: _claim2, 3: _claim3, 4: _claim4, 5: _claim5, 6: _claim6}


def verdicts(records: list[dict], expected: dict[str, list[str]]) -> list[dict]:
    """``[{"claim": i, "text": ..., "status": ..., "numbers": ...}, ...]`` for claims 1–6;
    ``expected``: every table's run names (a claim is unresolved while one it needs has no
    record)."""
    by = by_name(records)
    names = [n for runs in expected.values() for n in runs]
    out = []
    for i, text in CLAIMS.items():
        missing = [n for n in names if run_row(n) in NEEDS[i] and n not in by]
        if missing:
            status, numbers = f"not resolved: runs missing ({compact_names(missing)})", ""
        else:
            status, numbers = RULES[i](by)
        out.append({"claim": i, "text": text, "status": status, "numbers": numbers})
    return out
