"""Clean versus noisy training data at the study budget: does the baseline trained on clean
data beat the one trained on the ``study`` preset at zero-shot retrieval by more than the
seed-to-seed spread?

For every seed S: ``make-data synthetic --seed S`` twice (``--preset study``; ``--preset clean
--neighbors random``: the same videos, no misalignment, the same kind of candidate bags), then
``pretrain --config CONFIG seed=S`` on each and ``eval --tasks retrieval``. Resumable: a data
set with ``info.json``, a finished run and an ``eval.json`` of the final step are kept, an
interrupted run is resumed. Wall times of every stage go to ``RUNS/timing.json``; the summary
(per run, mean and sample standard deviation per condition, the gap and the paired
differences) to ``RUNS/summary.json`` and stdout.

    .venv/bin/python benchmarks/study_gap.py --data data/study --runs runs/study \
        --seeds 0 1 2 [--data-seed 0] [--parallel 2] [--config configs/study.yaml] [KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CONDITIONS = {"clean": ["--preset", "clean", "--neighbors", "random"],
              "study": ["--preset", "study"]}
METRICS = [("video_to_text", "R@10"), ("text_to_video", "R@10"),
           ("video_to_text", "MedR"), ("text_to_video", "MedR")]


def _gh(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("gradharmony")), *args]


_LOCK = threading.Lock()


def _timed(cmd: list[str], timing: dict, key: str, path: Path) -> None:
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True)
    with _LOCK:
        timing[key] = round(time.time() - t0, 1)
        path.write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")


def _final_step(run: Path) -> int | None:
    import torch

    path = run / "checkpoints" / "last.pt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=False)["step"])


def _data(a, seed: int, cond: str, timing: dict, timing_path: Path) -> Path:
    data_seed = seed if a.data_seed is None else a.data_seed
    d = Path(a.data) / f"s{data_seed}-{cond}"
    if not (d / "info.json").is_file():
        _timed(_gh("make-data", "synthetic", "--out", str(d), "--seed", str(data_seed),
                   "--clips", str(a.clips), *CONDITIONS[cond], "--probe-clips", "0", "0",
                   "--av-clips", "0", "0", "--quiet", "--overwrite"),
               timing, f"data/{d.name}", timing_path)
    return d


def _job(a, seed: int, cond: str, steps: int, timing: dict, timing_path: Path) -> None:
    runs = Path(a.runs)
    d = _data(a, seed, cond, timing, timing_path)
    name = f"{cond}-s{seed}"
    run = runs / name
    if (_final_step(run) or 0) < steps:
        mixture = f"[{{shards: {d / 'train'}, weight: 1.0, has_text: true}}]"
        _timed(_gh("pretrain", "--config", a.config, "--quiet", f"name={name}",
                   f"run_dir={runs}", f"data.mixture={mixture}",
                   f"data.cache_dir={d / 'cache'}", f"seed={seed}", "resume=true",
                   *a.overrides), timing, f"pretrain/{name}", timing_path)
    ev = run / "eval.json"
    done = json.loads(ev.read_text()) if ev.is_file() else {}
    if done.get("step") != steps or "retrieval" not in done:
        _timed(_gh("eval", "--run", str(run), "--data", str(d), "--tasks", "retrieval"),
               timing, f"eval/{name}", timing_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/study", help="folder of the data sets")
    p.add_argument("--runs", default="runs/study", help="folder of the runs")
    p.add_argument("--config", default="configs/study.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--data-seed", type=int,
                   help="one data set per condition with this seed (default: seed S's data "
                        "for training seed S)")
    p.add_argument("--clips", type=int, default=3200, help="training clips per data set")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE passed to pretrain")
    a = p.parse_args(argv)
    runs = Path(a.runs)
    runs.mkdir(parents=True, exist_ok=True)
    timing_path = runs / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    from omegaconf import OmegaConf

    steps = int(OmegaConf.merge(OmegaConf.load(a.config),
                                OmegaConf.from_dotlist(a.overrides)).steps)
    jobs = [(seed, cond) for seed in a.seeds for cond in CONDITIONS]
    if a.data_seed is not None:  # make the shared data sets first, one at a time
        for cond in CONDITIONS:
            _data(a, a.seeds[0], cond, timing, timing_path)
    with ThreadPoolExecutor(max(1, a.parallel)) as pool:
        for f in [pool.submit(_job, a, s, c, steps, timing, timing_path) for s, c in jobs]:
            f.result()
    summary = summarise(runs, a.seeds)
    (runs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["conditions"], indent=2))
    print(json.dumps(summary["gap"], indent=2))
    return 0


def summarise(runs: Path, seeds: list[int]) -> dict:
    """Per-run retrieval, mean and sample std over seeds per condition, and the clean - study
    gap (mean of the paired per-seed differences and their std) for every metric, plus
    ``R@10 mean`` (the two directions' R@10 averaged)."""
    per_run: dict[str, dict[int, dict[str, float]]] = {c: {} for c in CONDITIONS}
    for cond in CONDITIONS:
        for seed in seeds:
            r = json.loads((runs / f"{cond}-s{seed}" / "eval.json").read_text())["retrieval"]
            row = {f"{d} {m}": float(r[d][m]) for d, m in METRICS}
            row["R@10 mean"] = (row["video_to_text R@10"] + row["text_to_video R@10"]) / 2
            per_run[cond][seed] = row
    keys = list(next(iter(per_run["clean"].values())))

    def stats(values):
        return {"mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else float("nan")}

    conditions = {c: {k: stats([per_run[c][s][k] for s in seeds]) for k in keys}
                  for c in CONDITIONS}
    gap = {}
    for k in keys:
        diffs = [per_run["clean"][s][k] - per_run["study"][s][k] for s in seeds]
        spread = max(conditions["clean"][k]["std"], conditions["study"][k]["std"])
        gap[k] = {"clean_minus_study": statistics.fmean(diffs), "paired_diffs": diffs,
                  "max_condition_std": spread,
                  "gap_over_std": statistics.fmean(diffs) / spread if spread else float("inf")}
    return {"seeds": seeds, "runs": per_run, "conditions": conditions, "gap": gap}


if __name__ == "__main__":
    sys.exit(main())
