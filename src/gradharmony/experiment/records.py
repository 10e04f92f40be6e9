"""Compact records of finished study runs: everything the results document needs, small
enough to commit (run folders are not kept between sittings).

A record (``RECORDS/TABLE/NAME.json``) holds the run's name and overrides, its resolved
config and the config's sha256, the data it trained on (seed and noise settings of each
training set's ``info.json``), the evaluation metrics, and from the logged per-triplet
cosines, per training stage (consecutive logged steps split into equal parts): the cosine
distribution (mean, std, quantiles, a histogram), the kept fraction (from
``metrics.jsonl``) and the AUROC of ``-cos`` and of the losses against the ground truth
(:mod:`gradharmony.report.conjecture`).

A record is the proof that a run is done: a run whose record holds the same resolved config
is never trained or evaluated again; a record of another config is refused (never
overwritten).

Example:
    >>> config_sha256({"b": 1, "a": [1, 2]}) == config_sha256({"a": [1, 2], "b": 1})
    True
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from gradharmony.experiment.driver import ExperimentError

RECORD_FORMAT = 1
#: training stages of the cosine statistics and AUROCs
STAGES = 5
#: histogram of the per-triplet cosine: BINS equal bins on [-HIST_RANGE, HIST_RANGE] (most
#: logged cosines lie within ±0.2), values outside counted in ``under`` / ``over``
BINS = 80
HIST_RANGE = 0.4
QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: ground-truth targets kept in a record (per-kind targets are left out to keep it small)
RECORDED_TARGETS = ("text_misaligned", "audio_misaligned", "any_misaligned")
#: scores kept per target
SCORES = ("cos", "loss", "loss_va", "loss_vt")


#: record parts whose floats are rounded to 5 decimals (statistics; never the config)
ROUNDED = ("cosine", "conjecture", "train")


def config_sha256(resolved: dict) -> str:
    """The sha256 of a resolved config (canonical JSON: sorted keys)."""
    text = json.dumps(resolved, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def record_path(records, table: str, name: str) -> Path:
    """``RECORDS/TABLE/NAME.json``.

    Example:
        >>> record_path("docs/results", "table1", "gr-s0").as_posix()
        'docs/results/table1/gr-s0.json'
    """
    return Path(records) / table / f"{name}.json"


def recorded(path: Path, resolved: dict) -> bool:
    """True when ``path`` holds the record of a run of ``resolved``; False when there is no
    record; :class:`ExperimentError` naming ``--records`` when it holds another config."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExperimentError(f"--records: {path} is not a valid record ({err}): move it "
                              "away or choose another --records") from None
    if old.get("config_sha256") != config_sha256(resolved):
        keys = differing_keys(old.get("resolved", {}), resolved)
        raise ExperimentError(f"--records: {path} records run {old.get('run')!r} of another "
                              f"config than the one asked for now (differing keys: "
                              f"{', '.join(keys[:8]) or 'unknown'}); it is never overwritten: "
                              "choose another --records (or move that record away)")
    return True


def differing_keys(a, b, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs.

    Example:
        >>> differing_keys({"a": 1, "m": {"x": 1, "y": 2}}, {"a": 1, "m": {"x": 3}, "z": 0})
        ['m.x', 'm.y', 'z']
    """
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [prefix or "(root)"]
    out = []
    for k in sorted(set(a) | set(b), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in a or k not in b:
            out.append(key)
        else:
            out += differing_keys(a[k], b[k], key)
    return out


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` atomically; refuses to replace a record of another config."""
    recorded(path, record["resolved"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    out = {k: _rounded(v) if k in ROUNDED else v for k, v in record.items()}
    tmp.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_records(records) -> list[dict]:
    """Every record under ``RECORDS/*/`` (sorted by table and name); ``[]`` when none."""
    out = []
    for f in sorted(Path(records).glob("*/*.json")):
        rec = json.loads(f.read_text())
        if isinstance(rec, dict) and rec.get("format") == RECORD_FORMAT:
            out.append(rec)
    return out


def _rounded(obj, digits: int = 5):
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def stage_steps(steps, stages: int = STAGES) -> list[list[int]]:
    """``[[first, last], ...]``: the logged steps split into ``stages`` consecutive equal
    parts (as :func:`gradharmony.report.conjecture.stage_aurocs` splits them).

    Example:
        >>> stage_steps(range(10), 3)
        [[0, 3], [4, 6], [7, 9]]
    """
    s = np.array(sorted(set(int(x) for x in steps)))
    if s.size == 0:
        return []
    return [[int(p[0]), int(p[-1])] for p in np.array_split(s, min(stages, s.size))]


def cosine_stages(cos_by_step: dict[int, np.ndarray], metrics: list[dict],
                  stages: int = STAGES, bins: int = BINS, span: float = HIST_RANGE
                  ) -> list[dict]:
    """Per training stage: the distribution of the logged per-triplet cosines (``n``,
    ``mean``, ``std``, ``quantiles``, ``hist`` counts on ``bins`` equal bins of [-span,
    span], ``under``/``over`` counts outside it) and the mean ``kept_frac`` of the
    ``metrics`` rows logged in the stage. A cosine of exactly 0 is the harmonizer's value
    where one of the two gradients is zero (a triplet without narration, e.g. of a text-free
    set, or without sound): it has no direction and is counted in ``zero``, not in the
    distribution; ``nonfinite`` counts the rest left out.

    Example:
        >>> r = cosine_stages({0: np.array([-0.5, 0.5, 0.0]), 1: np.array([0.1, -0.9])},
        ...                   [{"step": 1, "kept_frac": 0.5}], stages=1, bins=2, span=0.6)
        >>> r[0]["n"], r[0]["zero"], r[0]["mean"], r[0]["hist"], r[0]["under"], r[0]["kept_frac"]
        (4, 1, -0.2, [1, 2], 1, 0.5)
    """
    out = []
    for lo, hi in stage_steps(cos_by_step, stages):
        parts = [np.asarray(c, np.float64).ravel() for t, c in cos_by_step.items()
                 if lo <= t <= hi]
        c = np.concatenate(parts) if parts else np.zeros(0)
        zero = c == 0.0
        finite = c[np.isfinite(c) & ~zero]
        hist, _ = np.histogram(finite, bins=bins, range=(-span, span))
        kept = [float(r["kept_frac"]) for r in metrics
                if "kept_frac" in r and lo <= int(r["step"]) <= hi]
        row = {"steps": [lo, hi], "n": int(finite.size), "zero": int(zero.sum()),
               "nonfinite": int(c.size - finite.size - zero.sum()),
               "mean": float(finite.mean()) if finite.size else float("nan"),
               "std": float(finite.std()) if finite.size else float("nan"),
               "quantiles": {str(q): float(v) for q, v in
                             zip(QUANTILES, np.quantile(finite, QUANTILES))}
               if finite.size else {},
               "hist": [int(h) for h in hist], "under": int((finite < -span).sum()),
               "over": int((finite > span).sum()),
               "kept_frac": float(np.mean(kept)) if kept else None}
        out.append(row)
    return out


def compact_aurocs(stages: list[dict]) -> list[dict]:
    """:func:`gradharmony.report.conjecture.stage_aurocs` output cut to :data:`RECORDED_TARGETS` and
    :data:`SCORES`, each score as ``[auroc, low, high]``."""
    out = []
    for st in stages:
        aur = {}
        for target in RECORDED_TARGETS:
            scores = st["auroc"].get(target)
            if not scores:
                continue
            aur[target] = {s: [scores[s]["auroc"], scores[s]["low"], scores[s]["high"]]
                           for s in SCORES if s in scores}
            aur[target]["n"] = int(scores.get("cos", {}).get("n", st["n"]))
        out.append({"steps": st["steps"], "n": st["n"], "auroc": aur})
    return out


def eval_summary(result: dict) -> dict:
    """The metrics of ``eval.json`` a record keeps: retrieval R@1/5/10 and MedR both ways,
    the probes' top-1/top-5 (and fine-tuning when present).

    Example:
        >>> r = {"step": 9, "retrieval": {"video_to_text": {"R@1": 1.0, "MedR": 5.0, "x": 0},
        ...                               "protocol": {"n": 100}}}
        >>> eval_summary(r)
        {'step': 9, 'retrieval': {'n': 100, 'video_to_text': {'R@1': 1.0, 'MedR': 5.0}}}
    """
    out: dict = {"step": result.get("step")}
    if "retrieval" in result:
        ret = result["retrieval"]
        out["retrieval"] = {"n": ret.get("protocol", {}).get("n")}
        for d in ("video_to_text", "text_to_video"):
            if d in ret:
                out["retrieval"][d] = {k: ret[d][k] for k in ("R@1", "R@5", "R@10", "MedR")
                                       if k in ret[d]}
    for task in ("probe", "finetune"):
        if task in result:
            out[task] = {name: {k: m[k] for k in ("top1", "top5") if k in m}
                         for name, m in result[task].items()}
    return out


def preset_of(noise: dict) -> str:
    """The ``make-data synthetic`` preset whose settings are ``noise`` (an ``info.json``'s),
    with the settings that differ from it, e.g. ``wild (neighbors=random)``.

    Example:
        >>> from dataclasses import asdict
        >>> from gradharmony.data.synthetic.plan import PRESETS
        >>> preset_of(asdict(PRESETS["study"])), preset_of({**asdict(PRESETS["wild"]),
        ...                                                  "neighbors": "random"})
        ('study', 'wild (neighbors=random)')
    """
    from dataclasses import asdict

    from gradharmony.data.synthetic.plan import PRESETS

    def differ(name):
        ref = asdict(PRESETS[name])
        out = []
        for k, v in ref.items():
            got = noise.get(k)
            same = got == v or (isinstance(got, float) and isinstance(v, float)
                                and abs(got - v) < 1e-9)
            if not same:
                out.append(f"{k}={got}")
        return out

    best = min(PRESETS, key=lambda n: len(differ(n)))
    diffs = differ(best)
    return f"{best} ({', '.join(diffs)})" if diffs else best


def data_info(folders) -> list[dict]:
    """Seed, noise settings and preset of each data folder's ``info.json`` (``{"path": ...}`` only
    when it has none).

    Example:
        >>> data_info(["/nonexistent"])
        [{'path': '/nonexistent'}]
    """
    out = []
    for folder in folders:
        path = Path(folder) / "info.json"
        row: dict = {"path": str(folder)}
        if path.is_file():
            info = json.loads(path.read_text())
            row.update({k: info[k] for k in ("seed", "noise", "version") if k in info})
            if isinstance(info.get("noise"), dict):
                row["preset"] = preset_of(info["noise"])
            row["train_clips"] = info.get("splits", {}).get("train", {}).get("clips")
        out.append(row)
    return out
