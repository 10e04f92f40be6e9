"""The conjecture during training: does a low logged cos(g_va, g_vt) flag misaligned triplets?

Training logs, every ``conflicts_every`` steps, the per-triplet cosines of the batch with the
clip keys and the per-triplet losses (``conflicts/*.npz``; see
:mod:`gradharmony.train.rundir`). Nothing is recomputed here: the ground truth of each key is
looked up in the shards' ``KEY.json`` (``text_aligned``, ``audio_aligned``, ``text_noise``,
``audio_noise``, ``video_id``) and the AUROC of ``-cos`` and of the losses (the small-loss
trick) is computed per training stage (consecutive logged steps split into ``stages`` equal
parts), in train mode, with the batches and weights training really had. The bootstrap
resamples videos (``video_id``) by default.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np

#: metadata fields kept as ground truth
TRUTH_FIELDS = ("text_aligned", "audio_aligned", "text_noise", "audio_noise", "video_id")


def read_truth(shards) -> dict[str, dict]:
    """``{key: {field: value}}`` of the :data:`TRUTH_FIELDS` in the ``KEY.json`` of shards
    (a folder, a glob, a ``.tar``, or a list of these); other members are not read.

    Example:
        >>> import tempfile
        >>> from gradharmony.data.writer import write_shards
        >>> d = tempfile.mkdtemp()
        >>> _ = write_shards([{"__key__": "k0", "json": {"text_aligned": False, "x": 1}}], d)
        >>> read_truth(d)
        {'k0': {'text_aligned': False}}
    """
    from gradharmony.evaluate.clips import shard_files

    patterns = [shards] if isinstance(shards, (str, os.PathLike)) else list(shards)
    out: dict[str, dict] = {}
    for pattern in patterns:
        for f in shard_files(pattern):
            with tarfile.open(f, "r") as tar:
                for member in tar:
                    d, base = os.path.split(member.name)
                    if not member.isfile() or not base.endswith(".json"):
                        continue
                    key = os.path.join(d, base.split(".", 1)[0]) if d else base.split(".", 1)[0]
                    meta = json.loads(tar.extractfile(member).read())
                    out[key] = {k: meta[k] for k in TRUTH_FIELDS if k in meta}
    return out


def training_rows(run_dir: str | os.PathLike, truth: dict[str, dict],
                  set_truths: list[dict | None] | None = None,
                  logged: dict | None = None) -> list[dict]:
    """One row per logged (step, triplet) with ``cos``, ``loss_va``, ``loss_vt``, ``loss`` and
    the triplet's ground truth; ``ValueError`` when the run logged no keys (an older run) or
    one cosine per group rather than per triplet, or when a key has no ground truth.

    ``set_truths``: the ground truth of each ``data.mixture`` set, for runs that logged the
    set of each triplet (keys repeat across sets): a triplet is looked up in its own set
    (its ``key`` and ``video`` become ``SET/KEY``, ``SET/VIDEO``), and the triplets of a set
    given as ``None`` (e.g. a text-free set, whose cosine is 0 by construction) are left out.
    Without logged sets, ``truth`` is used. ``logged``: the run's
    :func:`~gradharmony.train.rundir.load_conflict_records`, when already read.

    Example:
        >>> import tempfile
        >>> from gradharmony.train.rundir import RunLog
        >>> d = tempfile.mkdtemp(); log = RunLog(d, tensorboard=False)
        >>> log.conflicts(0, np.array([.5, -.5]), keys=["a", "b"], loss_va=np.ones(2),
        ...               loss_vt=np.zeros(2)); log.close()
        >>> rows = training_rows(d, {"a": {"text_aligned": True}, "b": {"text_aligned": False}})
        >>> [(r["key"], r["cos"], r["loss"], r["text_aligned"]) for r in rows]
        [('a', 0.5, 1.0, True), ('b', -0.5, 1.0, False)]
    """
    from gradharmony.train.rundir import load_conflict_records

    records = load_conflict_records(run_dir) if logged is None else logged
    if not records:
        raise ValueError(f"run {str(run_dir)!r} logged no cosines (conflicts/ is empty)")
    rows: list[dict] = []
    missing: list[str] = []
    for step, rec in records.items():
        if "keys" not in rec:
            raise ValueError(f"run {str(run_dir)!r} logged cosines without clip keys (trained "
                             "before keys were logged): train it again to measure the "
                             "conjecture during training")
        keys = rec["keys"]
        if rec["cos"].shape[0] != keys.shape[0]:
            raise ValueError(f"run {str(run_dir)!r} logged {rec['cos'].shape[0]} cosines for "
                             f"{keys.shape[0]} triplets at step {step}: per-triplet AUROCs "
                             "need granularity=sample")
        zeros = np.zeros(keys.shape[0], np.float32)
        lva, lvt = rec.get("loss_va", zeros), rec.get("loss_vt", zeros)
        sets = rec.get("sets") if set_truths is not None else None
        for j, key in enumerate(keys.tolist()):
            if sets is None:
                t = truth.get(key)
            else:
                s = int(sets[j])
                if s >= len(set_truths):
                    raise ValueError(f"run {str(run_dir)!r} logged mixture set {s}, but "
                                     f"{len(set_truths)} set truths were given")
                if set_truths[s] is None:
                    continue
                t = set_truths[s].get(key)
                if t is not None:
                    t = {**t, "video_id": f"{s}/{t.get('video_id', key)}"}
                    key = f"{s}/{key}"
            if t is None:
                missing.append(key)
                continue
            rows.append({"step": int(step), "key": key, "video": str(t.get("video_id", key)),
                         "cos": float(rec["cos"][j]), "loss_va": float(lva[j]),
                         "loss_vt": float(lvt[j]), "loss": float(lva[j] + lvt[j]), **t})
    if missing:
        raise ValueError(f"{len(set(missing))} logged clip keys have no ground truth in the "
                         f"given shards (e.g. {missing[0]!r}): pass the training shards")
    return rows


def stage_aurocs(rows: list[dict], stages: int = 4, n_boot: int = 200, seed: int = 0,
                 cluster: str = "video") -> list[dict]:
    """AUROCs of ``-cos`` and the losses per training stage: ``[{"steps": [first, last],
    "n": rows, "auroc": {target: {score: {...}}}}, ...]`` (see
    :func:`gradharmony.evaluate.scoring.detection_aurocs` for targets and the bootstrap).

    Example:
        >>> rows = [{"step": s, "cos": c, "loss": -c, "text_aligned": c > 0, "key": str(i)}
        ...         for i, (s, c) in enumerate([(0, -1), (0, 1), (1, -1), (1, 1)])]
        >>> r = stage_aurocs(rows, stages=2, n_boot=20, cluster="clip")
        >>> [s["steps"] for s in r], r[1]["auroc"]["text_misaligned"]["cos"]["auroc"]
        ([[0, 0], [1, 1]], 1.0)
    """
    from gradharmony.evaluate.scoring import detection_aurocs

    if stages < 1:
        raise ValueError(f"--stages must be >= 1, got {stages}")
    steps = np.array(sorted({r["step"] for r in rows}))
    if steps.size == 0:
        raise ValueError("no logged rows to measure")
    out = []
    for part in np.array_split(steps, min(stages, steps.size)):
        lo, hi = int(part[0]), int(part[-1])
        sub = [r for r in rows if lo <= r["step"] <= hi]
        out.append({"steps": [lo, hi], "n": len(sub),
                    "auroc": detection_aurocs(sub, n_boot=n_boot, seed=seed, cluster=cluster)})
    return out


def training_truth_paths(config: dict) -> list[str]:
    """The training shards of a run config (the text sets of ``data.mixture``).

    Example:
        >>> training_truth_paths({"data": {"mixture": [{"shards": "a", "has_text": True}]}})
        ['a']
    """
    mixture = (config.get("data") or {}).get("mixture") or []
    return [str(m["shards"]) for m in mixture if m.get("shards")]


class TruthClash(ValueError):
    """Clip keys that name clips of different ground truth in two training sets, in a run
    that did not log the set of each triplet."""


def merge_truth(truths: list[dict]) -> tuple[dict, list[str]]:
    """The ground truth of several training sets by clip key, and the keys that two sets
    give different ground truth (such a key has none of its own without the set).

    Example:
        >>> merge_truth([{"a": {"text_aligned": True}, "b": {"text_aligned": True}},
        ...              {"a": {"text_aligned": True}, "b": {"text_aligned": False}}])[1]
        ['b']
    """
    merged: dict = {}
    clash = set()
    for truth in truths:
        for key, value in truth.items():
            if key in merged and merged[key] != value:
                clash.add(key)
            merged.setdefault(key, value)
    return merged, sorted(clash)


def run_rows(run_dir: str | os.PathLike, config: dict, cache: dict | None = None,
             logged: dict | None = None) -> list[dict]:
    """:func:`training_rows` of a run with each triplet's own ground truth, read from the
    training sets of ``config`` (``cache``: path -> truth, filled as read). A run that logged
    the mixture set of each triplet is looked up set by set (text-free sets left out);
    otherwise the sets' truths are merged, and :class:`TruthClash` is raised when a key
    names clips of different truth in two sets. ``logged``: as for :func:`training_rows`.
    """
    from gradharmony.train.rundir import load_conflict_records

    cache = {} if cache is None else cache
    mixture = (config.get("data") or {}).get("mixture") or []
    for m in mixture:
        if str(m["shards"]) not in cache:
            cache[str(m["shards"])] = read_truth(str(m["shards"]))
    logged = load_conflict_records(run_dir) if logged is None else logged
    if logged and all("sets" in r for r in logged.values()):
        sets = [cache[str(m["shards"])] if m.get("has_text", True) else None for m in mixture]
        return training_rows(run_dir, {}, sets, logged)
    truth, clash = merge_truth([cache[str(m["shards"])] for m in mixture])
    if clash:
        raise TruthClash(f"{len(clash)} clip keys (e.g. {clash[0]!r}) name clips of different "
                         "ground truth in two training sets, and the logged keys do not tell "
                         "the set")
    return training_rows(run_dir, truth, logged=logged)


def conjecture_table(run_dirs: list[str | Path], truth: dict[str, dict] | None = None,
                     stages: int = 4, n_boot: int = 200, seed: int = 0,
                     targets: tuple[str, ...] | None = None) -> list[str]:
    """Markdown lines: per run, per stage, AUROC(-cos) and AUROC(loss) with their intervals.

    ``truth`` defaults to the ground truth of each run's own training shards.
    """
    from omegaconf import OmegaConf

    lines = ["| run | steps | target | AUROC(-cos) [95% CI] | AUROC(loss) [95% CI] | n |",
             "|---|---|---|---|---|---|"]
    for d in run_dirs:
        d = Path(d)
        if truth is None:
            cfg = OmegaConf.to_container(OmegaConf.load(d / "config.yaml"), resolve=True)
            rows = run_rows(d, cfg)
        else:
            rows = training_rows(d, truth)
        for st in stage_aurocs(rows, stages, n_boot, seed):
            for target, scores in st["auroc"].items():
                if targets is not None and target not in targets:
                    continue
                cells = []
                for name in ("cos", "loss"):
                    a = scores.get(name)
                    cells.append(f"{a['auroc']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
                                 if a else "–")
                n = scores.get("cos", {}).get("n", st["n"])
                lines.append(f"| {d.name} | {st['steps'][0]}–{st['steps'][1]} | {target} | "
                             f"{cells[0]} | {cells[1]} | {n} |")
    return lines
