"""Reading finished runs for the report: configuration label, metrics, evaluation, cosines."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: config keys that do not change what is being compared (several seeds = one configuration)
IGNORED_KEYS = ("seed", "name", "run_dir", "resume", "device", "log_every", "ckpt_every",
                "keep_every", "conflicts_every", "compile", "data.num_workers")


@dataclass
class RunRecord:
    """What the report needs of one run directory."""

    dir: Path
    config: dict
    metrics: list[dict]
    eval: dict
    conflicts: dict[int, np.ndarray]
    scores: list[dict] = field(default_factory=list)
    examples: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.config.get("method", "?"))

    @property
    def seed(self):
        return self.config.get("seed")


def _drop(cfg: dict, dotted: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest and isinstance(cfg.get(head), dict):
        _drop(cfg[head], rest)
    else:
        cfg.pop(head, None)


def config_key(config: dict) -> str:
    """A short hash of the configuration without seed, name and bookkeeping keys.

    Example:
        >>> config_key({"method": "gr", "seed": 0}) == config_key({"method": "gr", "seed": 1})
        True
    """
    cfg = json.loads(json.dumps(config, default=str))
    for k in IGNORED_KEYS:
        _drop(cfg, k)
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:8]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run(run_dir: str | Path) -> RunRecord:
    """Load a run directory; raise ``ValueError`` naming it when it is not a run.

    Example:
        >>> read_run("/nonexistent")
        Traceback (most recent call last):
        ...
        ValueError: '/nonexistent' is not a run directory (no config.yaml)
    """
    from gradharmony.train.rundir import load_conflicts
    from gradharmony.train.runfiles import read_config, read_npz

    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise ValueError(f"{str(d)!r} is not a run directory (no config.yaml)")
    config = read_config(d / "config.yaml")
    ev = json.loads((d / "eval.json").read_text()) if (d / "eval.json").is_file() else {}
    rec = RunRecord(d, config, _read_jsonl(d / "metrics.jsonl"), ev,
                    load_conflicts(d) if (d / "conflicts").is_dir() else {})
    rec.scores = _read_jsonl(d / "scores.jsonl")
    if (d / "scores.examples.npz").is_file():
        rec.examples = read_npz(d / "scores.examples.npz")
    if (d / "eval_embeddings.npz").is_file():
        rec.embeddings = read_npz(d / "eval_embeddings.npz")
    return rec


def label_runs(runs: list[RunRecord]) -> list[str]:
    """One label per run: the method, disambiguated by a config hash when two different
    configurations share a method; runs differing only in seed share a label.

    Example:
        >>> a = RunRecord(Path("a"), {"method": "gr", "seed": 0}, [], {}, {})
        >>> b = RunRecord(Path("b"), {"method": "gr", "seed": 1}, [], {}, {})
        >>> c = RunRecord(Path("c"), {"method": "gr", "steps": 9}, [], {}, {})
        >>> label_runs([a, b, c])[0] == label_runs([a, b, c])[1] != label_runs([a, b, c])[2]
        True
    """
    keys = [config_key(r.config) for r in runs]
    by_method: dict[str, set[str]] = {}
    for r, k in zip(runs, keys):
        by_method.setdefault(r.method, set()).add(k)
    return [r.method if len(by_method[r.method]) == 1 else f"{r.method} [{k}]"
            for r, k in zip(runs, keys)]


def pooled_cosines(conflicts: list[dict[int, np.ndarray]], max_bins: int = 60
                   ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Pool the logged cosines of one or several runs (seeds) into at most ``max_bins`` bins of
    consecutive steps: ``(bin centre steps, cosines of each bin)``. With one cosine per step
    (``batch`` granularity) the bins give the distribution over nearby steps.

    Example:
        >>> steps, cos = pooled_cosines([{0: np.array([0.1]), 1: np.array([0.3])}], max_bins=1)
        >>> steps.tolist(), cos[0].tolist()
        ([0.5], [0.1, 0.3])
    """
    merged: dict[int, list[np.ndarray]] = {}
    for conf in conflicts:
        for step, arr in conf.items():
            merged.setdefault(int(step), []).append(np.asarray(arr, dtype=float).ravel())
    if not merged:
        raise ValueError("no logged cosines (empty conflicts/)")
    steps = np.array(sorted(merged))
    chunks = np.array_split(np.arange(len(steps)), min(max_bins, len(steps)))
    centres = np.array([steps[c].mean() for c in chunks])
    cos = [np.concatenate([a for s in steps[c] for a in merged[int(s)]]) for c in chunks]
    return centres, cos
