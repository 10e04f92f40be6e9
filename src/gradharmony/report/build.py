"""Assembling ``report.md`` and its figures from run directories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradharmony.harmonize import DROPPING_METHODS
from gradharmony.report.figures import (
    plot_conflict_distribution,
    plot_contact_sheet,
    plot_cosine_histograms,
    plot_tsne,
)
from gradharmony.report.runs import RunRecord, label_runs, pooled_cosines, read_run
from gradharmony.report.table import comparison_table, flatten_metrics

#: Table 1 columns (in order) and their headers; other numeric eval entries are ignored
TABLE_COLUMNS = {
    "retrieval/video_to_text/R@1": "V→T R@1",
    "retrieval/video_to_text/R@10": "V→T R@10",
    "retrieval/video_to_text/MedR": "V→T MedR",
    "retrieval/text_to_video/R@1": "T→V R@1",
    "retrieval/text_to_video/R@10": "T→V R@10",
    "retrieval/text_to_video/MedR": "T→V MedR",
    "probe/video_action/top1": "action probe top-1",
    "probe/video_action/top5": "action probe top-5",
    "probe/audio_sound/top1": "sound probe top-1",
    "probe/audio_sound/top5": "sound probe top-5",
    "finetune/video_action/top1": "action FT top-1",
    "finetune/video_action/top5": "action FT top-5",
    "finetune/audio_sound/top1": "sound FT top-1",
    "finetune/audio_sound/top5": "sound FT top-5",
}
TRAIN_COLUMNS = {"loss_va": "final L_va", "loss_vt": "final L_vt", "cos_mean": "mean cos",
                 "kept_frac": "kept", "clips_per_s": "clips/s"}


def _first_by_label(runs, labels):
    seen: dict[str, RunRecord] = {}
    for r, lab in zip(runs, labels):
        seen.setdefault(lab, r)
    return seen


def _contact_items(run: RunRecord) -> dict[str, list[dict]]:
    groups = {}
    n = len(run.scores)
    for end, name in (("top", "top 5%"), ("bottom", "bottom 5%")):
        frames, index = run.examples.get(f"{end}_frames"), run.examples.get(f"{end}_index")
        if frames is None or index is None:
            return {}
        items = []
        for f, i in list(zip(frames, index))[:4]:
            row = run.scores[int(i)] if int(i) < n else {}
            flags = {k: row[k] for k in ("text_aligned", "audio_aligned") if k in row}
            items.append({"frames": f.astype(float) / 255.0, "text": row.get("text", "?"),
                          "cos": float(row.get("cos", np.nan)), "flags": flags})
        groups[name] = items
    return groups


def _protocol_notes(runs: list[RunRecord]) -> list[str]:
    notes = []
    for r in runs:
        ret = r.eval.get("retrieval", {}).get("protocol")
        if ret:
            notes.append(f"- retrieval ({r.dir.name}): {ret.get('n')} clips of "
                         f"`{ret.get('split')}`, {ret.get('windows')} window(s) per clip; "
                         f"ties: {ret.get('tie_rule')}.")
        for task in ("probe", "finetune"):
            for name, m in r.eval.get(task, {}).items():
                p = m.get("protocol", {})
                extra = f", C={p['C']}" if "C" in p else f", {p.get('epochs')} epochs"
                notes.append(f"- {task} {name} ({r.dir.name}): {p.get('split')}, "
                             f"n_train={p.get('n_train')}, n_test={p.get('n_test')}{extra}.")
        if notes:
            break  # the protocol is shared; list it once
    return notes


def _conjecture_section(runs: list[RunRecord], stages: int = 4) -> list[str]:
    """AUROC of the logged -cos and loss against ground truth over training stages, for the
    runs whose training logged clip keys and whose training shards carry ground truth."""
    from gradharmony.report.conjecture import (
        conjecture_table,
        read_truth,
        training_truth_paths,
    )

    lines, notes = [], []
    for r in runs:
        try:
            truth = read_truth(training_truth_paths(r.config))
            if not any("text_aligned" in t or "audio_aligned" in t for t in truth.values()):
                raise ValueError("its training shards carry no text_aligned/audio_aligned")
            table = conjecture_table([r.dir], truth, stages=stages)
        except ValueError as err:
            notes.append(f"- `{r.dir.name}`: not measured ({err})")
            continue
        lines += table[2:] if lines else table
    if not lines and not notes:
        return []
    md = ["## The conjecture during training: AUROC of -cos and of the loss", "",
          f"From the cosines, clip keys and per-triplet losses logged during training (train "
          f"mode, the batches training saw; no extra pass), split into {stages} stages of "
          "logged steps; ground truth from the training shards' KEY.json; 95% intervals "
          "from a bootstrap over videos (200 resamples, seed 0). Positive class: misaligned.",
          ""]
    return md + lines + [""] + notes + ([""] if notes else [])


def _downstream_section(runs: list[RunRecord], labels: list[str]) -> list[str]:
    md = ["## Downstream results (Table 1)", ""]
    rows = [(lab, flatten_metrics(r.eval)) for r, lab in zip(runs, labels) if r.eval]
    cols = [c for c in TABLE_COLUMNS if any(c in m for _, m in rows)]
    if not cols:
        return md + ["No `eval.json` in these runs: run `gradharmony eval --run RUN` first.", ""]
    return md + [comparison_table(rows, cols, TABLE_COLUMNS), "",
                 "Mean ± sample std over the runs of a configuration (n = runs); best per "
                 "column in **bold** (lowest median rank, highest otherwise). R@K and top-k in "
                 "percent.", "", "Protocol:", *_protocol_notes(runs), ""]


def _training_section(runs: list[RunRecord], labels: list[str]) -> list[str]:
    train_rows = []
    for r, lab in zip(runs, labels):
        logged = [m for m in r.metrics if "loss_va" in m]
        if logged:
            train_rows.append((lab, {k: float(logged[-1][k]) for k in TRAIN_COLUMNS
                                     if isinstance(logged[-1].get(k), (int, float))}))
    if not train_rows:
        return []
    tcols = [c for c in TRAIN_COLUMNS if any(c in m for _, m in train_rows)]
    return ["## Training (last logged window)", "",
            comparison_table(train_rows, tcols, TRAIN_COLUMNS, mark_best=False), ""]


def _conflict_figures(runs: list[RunRecord], labels: list[str], out: Path
                      ) -> list[tuple[str, Path]]:
    with_cos = [(r, lab) for r, lab in zip(runs, labels) if r.conflicts]
    if not with_cos:
        return []
    series, pooled = {}, {}
    for lab in dict.fromkeys(lab for _, lab in with_cos):
        confs = [r.conflicts for r, lb in with_cos if lb == lab]
        series[lab] = pooled_cosines(confs)
        pooled[lab] = np.concatenate([np.concatenate(list(c.values())) for c in confs])
    gammas = {}
    for r, lab in with_cos:
        if r.method in DROPPING_METHODS and lab not in gammas:
            rows_g = [m for m in r.metrics if "gamma" in m]
            if rows_g:
                gammas[lab] = (np.array([m["step"] for m in rows_g]),
                               np.array([m["gamma"] for m in rows_g]))
    return [("Figure 4: cos(g_va, g_vt) across training iterations",
             plot_conflict_distribution(series, out / "fig4_conflicts.png", thresholds=gammas)),
            ("Distribution of all logged cosines",
             plot_cosine_histograms(pooled, out / "fig4_histogram.png"))]


def _example_figures(runs: list[RunRecord], labels: list[str], out: Path, seed: int
                     ) -> list[tuple[str, Path]]:
    figs = []
    for lab, r in _first_by_label(runs, labels).items():
        items = _contact_items(r) if r.scores else {}
        if items:
            name = f"fig3_contact_{lab.replace(' ', '_').replace('/', '-')}.png"
            title = (f"{lab}: highest (top) and lowest (bottom) 5% cos(g_va, g_vt)\n"
                     "red text = misaligned by ground truth")
            figs.append((f"Figure 3 ({lab}): most and least aligned triplets by cos(g_va, g_vt)",
                         plot_contact_sheet(items, out / name, title=title)))
    emb = {lab: (r.embeddings["video_vt"], r.embeddings["text_vt"])
           for lab, r in _first_by_label(runs, labels).items() if "video_vt" in r.embeddings}
    if emb:
        figs.append(("Figure 5: t-SNE of video and text embeddings (retrieval split, seeded)",
                     plot_tsne(emb, out / "fig5_tsne.png", seed=seed)))
    return figs


def _figures_section(figs: list[tuple[str, Path]]) -> list[str]:
    md = ["## Figures", ""]
    for caption, path in figs:
        md += [f"### {caption}", "", f"![{caption}]({path.name})", ""]
    if not figs:
        md += ["No figure: the runs have no conflicts/, scores.jsonl or eval embeddings.", ""]
    return md


def _scoring_section(runs: list[RunRecord], labels: list[str]) -> list[str]:
    scored = [(r, lab) for r, lab in zip(runs, labels)
              if (r.dir / "scores.summary.json").is_file()]
    if not scored:
        return []
    md = ["## Alignment scoring: AUROC for detecting misaligned triplets", "",
          "| run | target | score | AUROC | 95% CI |", "|---|---|---|---|---|"]
    for r, lab in scored:
        s = json.loads((r.dir / "scores.summary.json").read_text())
        for target, scores in s.get("auroc", {}).items():
            for name, a in scores.items():
                md.append(f"| {lab} | {target} | {name} | {a['auroc']:.3f} | "
                          f"[{a['low']:.3f}, {a['high']:.3f}] |")
    return md + [""]


def build_report(run_dirs: list[str | Path], out: str | Path, seed: int = 0) -> Path:
    """Write ``out/report.md`` and its PNGs for the given runs; return the markdown path.

    Example:
        >>> build_report([], "/tmp/unused")
        Traceback (most recent call last):
        ...
        ValueError: no run directory given
    """
    if not run_dirs:
        raise ValueError("no run directory given")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(d) for d in run_dirs]
    labels = label_runs(runs)
    md = ["# gradharmony report", "",
          "Runs: " + ", ".join(f"`{r.dir}` ({lab}, seed {r.seed})"
                               for r, lab in zip(runs, labels)), ""]
    md += _downstream_section(runs, labels)
    md += _training_section(runs, labels)
    figs = _conflict_figures(runs, labels, out) + _example_figures(runs, labels, out, seed)
    md += _figures_section(figs)
    md += _scoring_section(runs, labels)
    md += _conjecture_section(runs)
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
