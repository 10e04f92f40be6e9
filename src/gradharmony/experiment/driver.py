"""The experiment machinery: train and score named runs of one config, resumably.

Folder layout (``OUT``)::

    OUT/experiment.json        kind, config path, the resolved base config
    OUT/runs/NAME/             a run directory (gradharmony pretrain) + experiment.json
    OUT/scores/NAME/SCORE.*    gradharmony score outputs (jsonl, summary.json)

Rules:

- ``OUT`` holding an experiment of another kind or another resolved base config is refused
  (:class:`ExperimentError` naming ``--out``): numbers of two configs never mix.
- A run whose ``experiment.json`` says it finished training, with the same resolved config,
  is skipped; one with another resolved config is refused. A run that stopped half-way is
  resumed from its checkpoint (``resume=true``); one that stopped before its first
  checkpoint is started again from scratch.
- A score whose ``summary.json`` exists and records the same options and the same
  checkpoint step is skipped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

#: keys of a resolved config that do not change what a run computes
BOOKKEEPING = ("resume", "device", "log_every", "ckpt_every", "compile")


class ExperimentError(RuntimeError):
    """An experiment folder that cannot be used as asked (another config, a foreign run)."""


@dataclass(frozen=True)
class RunSpec:
    """One training run of an experiment: a name and the config overrides that define it."""

    name: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ScoreSpec:
    """One scoring of a run: the run's name, a name for the score, ``gradharmony score``
    options (besides ``--run``, ``--out``)."""

    run: str
    name: str
    options: tuple[str, ...] = field(default_factory=tuple)


def _plain(cfg) -> dict:
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(cfg, resolve=True)
    for k in BOOKKEEPING:
        d.pop(k, None)
    return json.loads(json.dumps(d, default=str))


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


class Experiment:
    """Named runs of one config in one folder (see the module docstring).

    Example:
        >>> import tempfile
        >>> e = Experiment("evidence", None, tempfile.mkdtemp(), ["data.kind=random"])
        >>> e.run_dir(RunSpec("a")).name, e.state(RunSpec("a"))
        ('a', 'new')
    """

    def __init__(self, kind: str, config: str | None, out, base_overrides=(), log=print):
        from gradharmony.train.config import load_config

        self.kind, self.config, self.out = kind, config, Path(out)
        self.base = list(base_overrides)
        self.log = log
        base = _plain(load_config(config, [*self.base, "name=base", "run_dir=."]))
        for k in ("name", "run_dir", "seed"):
            base.pop(k, None)
        head = {"kind": kind, "config": str(config), "base_overrides": self.base,
                "resolved": base}
        path = self.out / "experiment.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old.get("kind") != kind or old.get("resolved") != base:
                what = "kind" if old.get("kind") != kind else "resolved config"
                raise ExperimentError(
                    f"--out {str(self.out)!r} holds a {old.get('kind')!r} experiment of another "
                    f"{what} (config {old.get('config')!r}, overrides "
                    f"{old.get('base_overrides')}): choose another --out")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_json(path, head)

    # -- runs ----------------------------------------------------------------------------
    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / "runs" / spec.name

    def run_config(self, spec: RunSpec, resume: bool = False):
        from gradharmony.train.config import load_config

        return load_config(self.config, [*self.base, *spec.overrides, f"name={spec.name}",
                                         f"run_dir={self.out / 'runs'}",
                                         f"resume={str(resume).lower()}"])

    def resolved(self, spec: RunSpec) -> dict:
        """The resolved config of ``spec`` as compared on reruns (no bookkeeping keys, no
        ``run_dir``: the folder may be named differently on the next call)."""
        d = _plain(self.run_config(spec))
        d.pop("run_dir", None)
        return d

    def state(self, spec: RunSpec) -> str:
        """``new``, ``finished``, ``partial`` (a checkpoint to resume from) or ``restart``
        (no checkpoint yet); :class:`ExperimentError` for a run of another config."""
        d = self.run_dir(spec)
        if not d.exists():
            return "new"
        meta_path = d / "experiment.json"
        if not meta_path.is_file():
            raise ExperimentError(f"--out: {d} exists but was not made by this experiment "
                                  "(no experiment.json): move it away or choose another --out")
        meta = json.loads(meta_path.read_text())
        if meta.get("resolved") != self.resolved(spec):
            raise ExperimentError(f"--out: run {d} was trained with another config than "
                                  f"{self.config!r} + {list(spec.overrides)}: choose another "
                                  "--out (or delete that run)")
        if meta.get("finished"):
            return "finished"
        return "partial" if (d / "checkpoints" / "last.pt").is_file() else "restart"

    def train(self, spec: RunSpec, progress: bool = False) -> str:
        """Train ``spec`` unless it finished; resume a half-finished one. Returns the state
        found (``new``, ``finished``, ``partial``, ``restart``)."""
        from gradharmony.train.loop import pretrain

        state = self.state(spec)
        d = self.run_dir(spec)
        if state == "finished":
            self.log(f"[{self.kind}] {spec.name}: trained, skipped")
            return state
        if state == "restart":
            shutil.rmtree(d)
        cfg = self.run_config(spec, resume=state == "partial")
        if state != "partial":
            d.mkdir(parents=True, exist_ok=True)
        meta = {"run": spec.name, "overrides": list(spec.overrides),
                "resolved": self.resolved(spec), "finished": False}
        _write_json(d / "experiment.json", meta)
        self.log(f"[{self.kind}] {spec.name}: {'resuming' if state == 'partial' else 'training'}"
                 f" ({cfg.steps} steps)")
        summary = pretrain(cfg, progress=progress)
        _write_json(d / "experiment.json", {**meta, "finished": True, "summary": summary})
        return state

    def train_command(self, spec: RunSpec) -> str:
        """The ``gradharmony pretrain`` command line that (re)trains ``spec``."""
        cfg = f"--config {self.config} " if self.config else ""
        over = " ".join([*self.base, *spec.overrides, f"name={spec.name}",
                         f"run_dir={self.out / 'runs'}"])
        return f"gradharmony pretrain {cfg}{over}"

    # -- scores --------------------------------------------------------------------------
    def score_path(self, spec: ScoreSpec) -> Path:
        return self.out / "scores" / spec.run / f"{spec.name}.jsonl"

    def score_command(self, spec: ScoreSpec) -> str:
        return " ".join(["gradharmony score", "--run", str(self.out / "runs" / spec.run),
                         *spec.options, "--out", str(self.score_path(spec))])

    def score(self, spec: ScoreSpec) -> dict:
        """Run ``gradharmony score`` for ``spec`` unless its summary exists with the same
        options and checkpoint step; return the summary."""
        from gradharmony.evaluate.cli import main_score

        path = self.score_path(spec)
        summary_path = path.with_suffix(".summary.json")
        run = self.out / "runs" / spec.run
        meta = json.loads((run / "experiment.json").read_text()) \
            if (run / "experiment.json").is_file() else {}
        if not meta.get("finished"):
            raise ExperimentError(f"score {spec.name}: run {run} has not finished training")
        step = int(meta.get("summary", {}).get("steps", -1))
        if summary_path.is_file():
            old = json.loads(summary_path.read_text())
            if old.get("experiment_options") == list(spec.options) and old.get("step") == step:
                self.log(f"[{self.kind}] {spec.run}/{spec.name}: scored, skipped")
                return old
        path.parent.mkdir(parents=True, exist_ok=True)
        self.log(f"[{self.kind}] {spec.run}/{spec.name}: scoring")
        main_score(["--run", str(run), *spec.options, "--out", str(path), "--quiet"])
        summary = json.loads(summary_path.read_text())
        summary["experiment_options"] = list(spec.options)
        _write_json(summary_path, summary)
        return summary
