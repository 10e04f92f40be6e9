"""``gradharmony experiment evidence``: does cos(g_va, g_vt) detect misaligned triplets?

Trains, for every seed and every number of MIL-NCE candidates k, one run of ``--config``
(with ``granularity=sample`` and ``conflicts_every=1`` so that every step logs one cosine,
clip key and loss per triplet), scores each run's training data four ways and writes a
markdown document from the files it wrote:

- ``shard``: ``gradharmony score --order shard --scope all`` (whole videos per batch);
- ``shuffled``: ``--order shuffled --scope all`` (batches as training from the cache);
- ``shuffled-shared``: ``--order shuffled --scope shared`` (only parameters both losses reach);
- the embedding-level cosine ``cos_emb`` of the ``shuffled`` scoring;
- training stages: the AUROC of the logged ``-cos`` and loss in ``--stages`` stages of
  training (train mode, the batches training saw; :mod:`gradharmony.report.conjecture`).

Every table cell is the mean ± sample std over seeds of the AUROC, with the mean of the
seeds' 95% cluster-bootstrap interval bounds (videos resampled) in brackets. The loss and
similarity columns use the modality of the target: ``loss_vt``/``sim_vt`` for text targets,
``loss_va``/``sim_va`` for audio targets. Finished runs and scores are skipped on a rerun
(see :mod:`gradharmony.experiment.driver`).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import numpy as np

from gradharmony.cli import Parser, at_least, existing_file, require, writable_path
from gradharmony.errors import InputError
from gradharmony.experiment.driver import Experiment, RunSpec, ScoreSpec

#: score name -> (gradharmony score options, description)
SCORINGS = {
    "shard": (("--order", "shard", "--scope", "all"), "shard order, scope all"),
    "shuffled": (("--order", "shuffled", "--scope", "all"), "shuffled order, scope all"),
    "shuffled-shared": (("--order", "shuffled", "--scope", "shared"),
                        "shuffled order, scope shared"),
}
#: table rows from scorings: (label, score name, cosine column)
SCORE_ROWS = [("shard order, scope all", "shard", "cos"),
              ("shuffled order, scope all", "shuffled", "cos"),
              ("shuffled order, scope shared", "shuffled-shared", "cos"),
              ("shuffled order, embedding-level", "shuffled", "cos_emb")]
FORCED = ("granularity=sample", "conflicts_every=1")


def run_name(k: int, seed: int) -> str:
    """Example:
        >>> run_name(4, 0)
        'k4-seed0'
    """
    return f"k{k}-seed{seed}"


def _columns(target: str) -> tuple[str, str]:
    return ("loss_va", "sim_va") if target.startswith("audio") else ("loss_vt", "sim_vt")


def _cell(values: list[dict | None]) -> str:
    vals = [v for v in values if v]
    if not vals:
        return "–"
    a = np.array([v["auroc"] for v in vals])
    sd = f" ± {a.std(ddof=1):.3f}" if len(a) > 1 else ""
    lo, hi = np.mean([v["low"] for v in vals]), np.mean([v["high"] for v in vals])
    return f"{a.mean():.3f}{sd} [{lo:.3f}, {hi:.3f}]"


def _targets(aurocs: list[dict]) -> list[str]:
    names = sorted({t for a in aurocs for t in a if not t.startswith("any")},
                   key=lambda t: (not t.startswith("text"), ":" in t, t))
    return names


def _score_rows(k, seeds, summaries, label, name, column) -> list[str]:
    lines = []
    per_seed = [summaries.get((k, s, name), {}).get("auroc", {}) for s in seeds]
    for target in _targets(per_seed):
        loss, sim = _columns(target)
        cells = [_cell([a.get(target, {}).get(c) for a in per_seed]) for c in (column, loss, sim)]
        n = per_seed[0].get(target, {}).get(column, {}).get("n", "?")
        lines.append(f"| k={k} | {label} | {target} | {' | '.join(cells)} | {n} |")
    return lines


def _stage_rows(k, seeds, stages_by_seed) -> list[str]:
    lines = []
    first = stages_by_seed[0]
    for i, st in enumerate(first):
        per_seed = [stages_by_seed[j][i]["auroc"] if i < len(stages_by_seed[j]) else {}
                    for j in range(len(seeds))]
        for target in _targets(per_seed):
            loss, _ = _columns(target)
            cells = [_cell([a.get(target, {}).get(c) for a in per_seed]) for c in ("cos", loss)]
            n = per_seed[0].get(target, {}).get("cos", {}).get("n", "?")
            lines.append(f"| k={k} | training steps {st['steps'][0]}–{st['steps'][1]} "
                         f"(train mode, logged) | {target} | {cells[0]} | {cells[1]} | – | {n} |")
    return lines


def _verdict(summaries: dict, stages: dict, ks, seeds) -> list[str]:
    """Plain statements computed from the numbers: where the -cos interval excludes 0.5 and
    whether it beats the loss."""
    out = []
    for (k, name, column, target), cells in _collect(summaries, stages, ks, seeds).items():
        cos, loss = cells
        if not cos:
            continue
        m = float(np.mean([c["auroc"] for c in cos]))
        lo = float(np.mean([c["low"] for c in cos]))
        hi = float(np.mean([c["high"] for c in cos]))
        ml = float(np.mean([c["auroc"] for c in loss])) if loss else float("nan")
        detects = "detects" if lo > 0.5 else ("is inverted" if hi < 0.5 else "does not detect")
        out.append((k, name, column, target, m, lo, hi, ml, detects))
    return out


def _collect(summaries, stages, ks, seeds) -> dict:
    cells: dict = {}
    for k in ks:
        for _, name, column in SCORE_ROWS:
            per_seed = [summaries.get((k, s, name), {}).get("auroc", {}) for s in seeds]
            for target in ("text_misaligned", "audio_misaligned"):
                loss, _ = _columns(target)
                cells[(k, name, column, target)] = (
                    [a[target][column] for a in per_seed if target in a],
                    [a[target][loss] for a in per_seed if target in a])
        last = [stages[(k, s)][-1]["auroc"] for s in seeds if stages.get((k, s))]
        for target in ("text_misaligned", "audio_misaligned"):
            loss, _ = _columns(target)
            cells[(k, "training (last stage)", "cos", target)] = (
                [a[target]["cos"] for a in last if target in a],
                [a[target][loss] for a in last if target in a])
    return cells


def run_evidence(config: str | None, out, doc=None, seeds=(0, 1, 2), ks=(1, 4),
                 overrides=(), score_data: str | None = None, score_limit: int | None = None,
                 n_boot: int = 1000, stages: int = 4, drop_batches: int = 8,
                 progress: bool = False, log=print) -> Path:
    """Train, score and write the evidence document (``doc``, default ``OUT/evidence.md``)."""
    from omegaconf import OmegaConf

    from gradharmony.report.conjecture import (
        read_truth,
        stage_aurocs,
        training_rows,
        training_truth_paths,
    )

    exp = Experiment("evidence", config, out, [*overrides, *FORCED], log=log)
    runs = {(k, s): RunSpec(run_name(k, s), (f"seed={s}", f"data.candidates={k}"))
            for k in ks for s in seeds}
    for spec in runs.values():
        exp.train(spec, progress=progress)
    first = exp.run_config(next(iter(runs.values())))
    data = score_data or training_truth_paths(OmegaConf.to_container(first, resolve=True))[0]
    common = ["--data", str(data), "--n-boot", str(n_boot), "--cluster", "video", "--seed", "0",
              "--examples", "0"] + (["--limit", str(score_limit)] if score_limit else [])
    summaries, commands = {}, {}
    for (k, s), spec in runs.items():
        for name, (opts, _) in SCORINGS.items():
            sspec = ScoreSpec(spec.name, name, (*common, *opts))
            summaries[(k, s, name)] = exp.score(sspec)
            commands[name] = (*common, *opts)
    truth = read_truth(training_truth_paths(OmegaConf.to_container(first, resolve=True)))
    stage_res = {(k, s): stage_aurocs(training_rows(exp.run_dir(spec), truth), stages,
                                      n_boot=200, seed=0)
                 for (k, s), spec in runs.items()}
    drop = None
    if drop_batches > 0:
        from gradharmony.experiment.drop import compare_drop

        path = Path(out) / "drop_comparison.json"
        k_drop = max(ks)
        if path.is_file():
            drop = json.loads(path.read_text())
        else:
            drop = {m: compare_drop(exp.run_dir(runs[(k_drop, seeds[0])]), data, method=m,
                                    batches=drop_batches, limit=score_limit)
                    for m in ("cl", "both")}
            path.write_text(json.dumps(drop, indent=2))
    md = _document(exp, config, out, seeds, ks, overrides, data, score_limit, n_boot, stages,
                   summaries, commands, stage_res, drop, drop_batches)
    doc = Path(doc) if doc else Path(out) / "evidence.md"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(md) + "\n")
    log(f"[evidence] wrote {doc}")
    return doc


def _document(exp, config, out, seeds, ks, overrides, data, score_limit, n_boot, stages,
              summaries, commands, stage_res, drop, drop_batches) -> list[str]:
    seeds_s = " ".join(str(s) for s in seeds)
    cmd = ["gradharmony experiment evidence", f"--config {config}" if config else "",
           f"--out {out}", f"--seeds {','.join(map(str, seeds))}",
           f"--ks {','.join(map(str, ks))}",
           f"--score-data {data}", f"--n-boot {n_boot}", f"--stages {stages}",
           f"--drop-batches {drop_batches}"]
    if score_limit:
        cmd.append(f"--score-limit {score_limit}")
    cmd += [f"--set {shlex.quote(o)}" for o in overrides]
    md = ["# Evidence: does cos(g_va, g_vt) detect misaligned triplets?", "",
          "Generated by (rerunning it skips what is done and rewrites this file):", "",
          "```bash", " ".join(c for c in cmd if c), "```", "",
          f"Config `{config}` with overrides `{' '.join([*overrides, *FORCED])}`; "
          f"seeds {seeds_s}; k (MIL-NCE candidates) in {', '.join(map(str, ks))}. "
          f"Scored data: `{data}`"
          + (f" (first {score_limit} clips)" if score_limit else "") + ".", "",
          "Each cell: mean ± sample std over seeds of the AUROC for detecting misaligned "
          "triplets (positive class: ground-truth flag false; per kind: that kind against the "
          "aligned triplets), then in brackets the mean over seeds of the 95% "
          f"cluster-bootstrap interval bounds ({n_boot} resamples of videos for scorings, 200 "
          "for training stages, seed 0). AUROC(loss) and AUROC(-sim) use the target's "
          "modality (loss_vt / sim_vt for text, loss_va / sim_va for audio). n = triplets of "
          "seed "
          f"{seeds[0]}.", "",
          "| k | measurement | target | AUROC(-cos) | AUROC(loss) | AUROC(-sim) | n |",
          "|---|---|---|---|---|---|---|"]
    cmds = []
    for k in ks:
        for label, name, column in SCORE_ROWS:
            md += _score_rows(k, seeds, summaries, label, name, column)
        md += _stage_rows(k, seeds, [stage_res[(k, s)] for s in seeds])
    for name, opts in commands.items():
        spec = ScoreSpec("RUN", name, opts)
        line = exp.score_command(spec).replace(str(exp.out / "runs" / "RUN"),
                                                str(exp.out / "runs" / "k$k-seed$s"))
        line = line.replace(str(exp.out / "scores" / "RUN"),
                            str(exp.out / "scores" / "k$k-seed$s"))
        cmds.append(f"- {SCORINGS[name][1]}: `for k in {' '.join(map(str, ks))}; do for s in "
                    f"{seeds_s}; do {line}; done; done`")
    md += ["", "Commands that regenerate each number (the table cells of a scoring are in "
           "`scores.summary.json` → `auroc`; the embedding-level rows are the `cos_emb` "
           "entries of the shuffled scoring):", "", *cmds,
           f"- training stages: `for k in {' '.join(map(str, ks))}; do for s in {seeds_s}; do "
           f"gradharmony report {exp.out}/runs/k$k-seed$s --out {exp.out}/report-k$k-seed$s; "
           "done; done` (section \"The conjecture during training\"; "
           f"{stages} stages, as here)",
           "- training runs: `" + exp.train_command(
               RunSpec("k$k-seed$s", ("seed=$s", "data.candidates=$k"))) + "`",
           ""]
    md += ["## What the numbers say (computed)", ""]
    for k, name, column, target, m, lo, hi, ml, detects in _verdict(summaries, stage_res, ks,
                                                                      seeds):
        label = {"cos": "cos", "cos_emb": "embedding-level cos"}[column]
        cmp = "above" if m > ml else "below"
        out_name = name if name.startswith("training") else SCORINGS[name][1]
        md.append(f"- k={k}, {out_name}, {label}, {target}: AUROC(-cos) {m:.3f} "
                  f"[{lo:.3f}, {hi:.3f}] {detects} (interval vs 0.5); {cmp} AUROC(loss) "
                  f"{ml:.3f}.")
    md.append("")
    if drop:
        md += ["## Dropping a triplet: own-pass gradient only, or from the batch too", ""]
        for method, d in drop.items():
            m = d["mean"]
            md.append(f"- `{method}` at step {d['step']} of `{d['run']}`, gamma "
                      f"{d['gamma']:+.3f}, {len(d['batches'])} shuffled batches of "
                      f"{d['batch_size']}: {m['dropped']:.1%} of the triplets dropped; cosine "
                      f"between the two updates {m['cos']:.4f} (min {d['min_cos']:.4f}), norm "
                      f"ratio (removed / own-pass) {m['norm_ratio']:.3f}.")
        d = next(iter(drop.values()))
        md += ["", "Regenerate (the command above writes it to `drop_comparison.json`; each "
               "method: `method='cl'` or `'both'`): `python -c \"from "
               "gradharmony.experiment.drop import compare_drop; print(compare_drop("
               f"'{d['run']}', '{data}', method='cl', batches={drop_batches}, "
               f"limit={score_limit})['mean'])\"`", "",
               "Scale note: Both drops what CL drops (cos <= gamma) and projects only the triplets "
               "with gamma < cos < 0; near gamma = 0 these are few, so its update is close to "
               "CL's.", ""]
    return md


def _parser() -> Parser:
    p = Parser(prog="gradharmony experiment evidence",
                                description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="training preset (e.g. configs/study.yaml)")
    p.add_argument("--out", required=True, help="experiment folder (runs, scores, JSON)")
    p.add_argument("--doc", default=None, help="markdown output (default: OUT/evidence.md)")
    p.add_argument("--seeds", default="0,1,2", help="comma list of training seeds")
    p.add_argument("--ks", default="1,4", help="comma list of MIL-NCE candidate counts k")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (repeatable), e.g. --set steps=200 "
                        "--set data.mixture.0.shards=data/study/train")
    p.add_argument("--score-data", default=None,
                   help="shards to score (default: the config's first training set)")
    p.add_argument("--score-limit", type=at_least(1), default=None,
                   help="score at most N clips")
    p.add_argument("--n-boot", type=at_least(1), default=1000,
                   help="bootstrap resamples (scorings)")
    p.add_argument("--stages", type=at_least(1), default=4,
                   help="training stages (>= 4 recommended)")
    p.add_argument("--drop-batches", type=at_least(0), default=8,
                   help="batches of the drop comparison (0: skip it)")
    p.add_argument("--progress", action="store_true", help="training progress bars")
    return p


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option}: expected a comma list of integers, got {text!r}") from None
    require(bool(vals), f"{option}: empty list")
    return vals


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony experiment evidence``."""
    args = _parser().parse_args(argv)
    seeds, ks = _ints(args.seeds, "--seeds"), _ints(args.ks, "--ks")
    require(all(k >= 1 for k in ks), f"--ks: every k must be >= 1, got {list(ks)}")
    if args.config is not None:
        existing_file("--config", args.config, "a training preset (.yaml)")
    writable_path("--out", args.out, "folder")
    run_evidence(args.config, args.out, args.doc, seeds, ks, args.set, args.score_data,
                 args.score_limit, args.n_boot, args.stages, args.drop_batches, args.progress,
                 log=lambda m: print(m, file=sys.stderr))
    return 0
