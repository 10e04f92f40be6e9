"""The results document (``docs/results.md``): a pure function of the run records.

:func:`render` turns records into markdown; :func:`write_results` reads every record under
``RECORDS/*/``, draws Figure 4 next to them and writes the document.

Example:
    >>> from gradharmony.experiment.summary import fake_record
    >>> md = render([fake_record("baseline-s0")], {"table1": ["baseline-s0", "gr-s0"]}, "CMD")
    >>> "| baseline | 1 |" in md, "gr-s0" in md
    (True, True)
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from gradharmony.experiment.stats import mean_std
from gradharmony.experiment.summary import (
    FINETUNE_METRICS,
    RUN_METRICS,
    baseline_row,
    by_name,
    compact_names,
    diff,
    row_values,
)
from gradharmony.experiment.tables import (
    TABLE2_METHODS,
    TABLE2_SETTINGS,
    make_data_commands,
    run_row,
)
from gradharmony.experiment.verdicts import verdicts
from gradharmony.harmonize import DROPPING_METHODS

TABLE1_ROWS = ("baseline", "rw-va", "rw-vt", "gr", "gradvac", "cl", "both", "both-batch",
               "small-loss", "clean-baseline")
TABLE2_ROWS = tuple(m if s == "noisy" else f"{s}-{m}" for s in TABLE2_SETTINGS
                    for m in TABLE2_METHODS)
GAMMA_ROWS = ("cl", "cl-g0")
TABLE3_ROWS = ("ms-baseline", "ms-gr")
SUMMARY_METRICS = ("R@10", "MedR", "video probe top-1", "audio probe top-1")
FIGURE = "figure4.png"


def cell(values, digits: int = 1) -> str:
    """``mean ± std`` of the values (``–`` when none; no ``±`` for one value).

    Example:
        >>> cell([1.0, 2.0, 3.0]), cell([2.0]), cell([])
        ('2.0 ± 1.0', '2.0', '–')
    """
    v = list(values)
    if not v:
        return "–"
    m, s = mean_std(v)
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def diff_cell(d: dict, digits: int = 1) -> str:
    """A difference with its interval, in bold when the interval excludes 0.

    Example:
        >>> diff_cell({"mean": 2.0, "low": 0.5, "high": 3.5, "n": 3, "sign": 1})
        '**+2.0 [+0.5, +3.5]**'
        >>> diff_cell({"mean": 2.0, "low": -0.5, "high": 4.5, "n": 3, "sign": 0})
        '+2.0 [-0.5, +4.5]'
    """
    if d["n"] == 0 or math.isnan(d["mean"]):
        return "–"
    if math.isnan(d["low"]):
        return f"{d['mean']:+.{digits}f} (n=1)"
    text = f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"**{text}**" if d["sign"] != 0 else text


def _rows_present(by, rows) -> list[str]:
    present = {run_row(n) for n in by}
    return [r for r in rows if r in present]


def metric_table(by, rows, metrics, base: bool = True) -> list[str]:
    """Markdown: per row, seeds and mean ± std of each metric; then, when ``base``, the
    difference to the row's baseline with its paired 95 % interval."""
    rows = _rows_present(by, rows)
    if not rows:
        return ["(no records yet)", ""]
    head = "| row | seeds | " + " | ".join(metrics) + " |"
    out = [head, "|---|---:|" + "---:|" * len(metrics)]
    for r in rows:
        seeds = sorted({s for m in metrics for s in row_values(by, r, m)})
        out.append(f"| {r} | {len(seeds)} | "
                   + " | ".join(cell(row_values(by, r, m).values()) for m in metrics) + " |")
    out.append("")
    if base:
        out += ["Difference to the baseline row (paired by seed; mean [95 % t-interval]; "
                "**bold**: the interval excludes 0):", "",
                head.replace("| seeds |", "| vs |"), out[1]]
        for r in rows:
            if r.endswith("baseline") and r != "clean-baseline":
                continue
            ds = [diff(by, r, m) for m in metrics]
            out.append(f"| {r} | {baseline_row(r)} | " + " | ".join(diff_cell(d) for d in ds)
                       + " |")
        out.append("")
    return out


def pair_table(by, row: str, base: str, metrics) -> list[str]:
    """Markdown: ``row − base`` for each metric (paired by seed, 95 % interval, bold where
    it excludes 0); nothing when either row has no records.

    Example:
        >>> from gradharmony.experiment.summary import fake_record
        >>> by = by_name([fake_record("cl-s0", r10=5.0), fake_record("cl-g0-s0", r10=3.0)])
        >>> pair_table(by, "cl", "cl-g0", ["R@10"])[2]
        '| cl − cl-g0 | +2.0 (n=1) |'
    """
    if not (row_values(by, row, metrics[0]) and row_values(by, base, metrics[0])):
        return []
    return ["| difference | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics),
            f"| {row} − {base} | " + " | ".join(diff_cell(diff(by, row, m, base=base))
                                               for m in metrics) + " |", ""]


def gain_table(by, metric: str = "R@10") -> list[str]:
    """Markdown: per Table 2 method, its difference to the baseline of each data setting
    (paired by seed, 95 % interval, bold where it excludes 0).

    Example:
        >>> from gradharmony.experiment.summary import fake_record
        >>> by = by_name([fake_record("baseline-s0"), fake_record("gr-s0", r10=12.0)])
        >>> gain_table(by)[2]
        '| gr | +2.0 (n=1) | – | – |'
    """
    out = [f"| method | {' | '.join(TABLE2_SETTINGS)} |",
           "|---|" + "---:|" * len(TABLE2_SETTINGS)]
    for m in TABLE2_METHODS[1:]:
        cells = [diff_cell(diff(by, m if st == "noisy" else f"{st}-{m}", metric))
                 for st in TABLE2_SETTINGS]
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return [*out, ""]


def cosine_table(records) -> list[str]:
    """Markdown: per data setting and method, the mean logged per-triplet cosine (mean ± std
    over seeds) and per stage."""
    by = by_name(records)
    out = ["| row | setting | seeds | mean cosine | per stage (mean over seeds) |",
           "|---|---|---:|---:|---|"]
    rows = sorted({run_row(n) for n in by}, key=lambda r: (by_setting(records, r), r))
    for r in rows:
        vals = row_values(by, r, "mean cosine")
        recs = [x for x in records if x["row"] == r and x.get("cosine", {}).get("stages")]
        k = min((len(x["cosine"]["stages"]) for x in recs), default=0)
        stages = " / ".join(cell([x["cosine"]["stages"][i]["mean"] for x in recs], 3)
                            .split(" ±")[0] for i in range(k))
        out.append(f"| {r} | {by_setting(records, r)} | {len(vals)} | "
                   f"{cell(vals.values(), 4)} | {stages} |")
    return [*out, ""] if len(out) > 2 else ["(no records yet)", ""]


def by_setting(records, row: str) -> str:
    return next((r.get("setting", "") for r in records if r["row"] == row), "")


def kept_table(records) -> list[str]:
    """Markdown: the kept fraction per stage of the rows that drop triplets (CL, Both,
    small-loss)."""
    out = ["| row | kept fraction per stage (mean over seeds) |", "|---|---|"]
    for r in sorted({x["row"] for x in records}):
        recs = [x for x in records
                if x["row"] == r and x.get("method") in DROPPING_METHODS]
        if not recs:
            continue
        k = min(len(x["cosine"]["stages"]) for x in recs)
        vals = []
        for i in range(k):
            v = [x["cosine"]["stages"][i].get("kept_frac") for x in recs]
            v = [a for a in v if a is not None]
            vals.append(f"{sum(v) / len(v):.3f}" if v else "–")
        out.append(f"| {r} | {' / '.join(vals)} |")
    return [*out, ""] if len(out) > 2 else ["(no CL or Both records yet)", ""]


def conjecture_section(records) -> list[str]:
    """Markdown: per row and training stage, AUROC(−cos) and AUROC(loss of the target's
    modality) for text and audio misalignment, mean ± std over seeds."""
    out = ["| row | stage (steps) | text: AUROC(−cos) | text: AUROC(loss_vt) | "
           "audio: AUROC(−cos) | audio: AUROC(loss_va) |", "|---|---|---:|---:|---:|---:|"]
    for r in sorted({x["row"] for x in records}):
        recs = [x for x in records if x["row"] == r and x.get("conjecture")]
        if not recs:
            continue
        for i in range(min(len(x["conjecture"]) for x in recs)):
            cells = []
            for target, loss in (("text_misaligned", "loss_vt"), ("audio_misaligned",
                                                                  "loss_va")):
                for score in ("cos", loss):
                    v = [x["conjecture"][i]["auroc"].get(target, {}).get(score) for x in recs]
                    cells.append(cell([a[0] for a in v if a], 3))
            st = recs[0]["conjecture"][i]["steps"]
            out.append(f"| {r} | {st[0]}–{st[1]} | " + " | ".join(cells) + " |")
    notes = sorted({f"{x['run']}: {x['conjecture_note']}" for x in records
                    if x.get("conjecture_note")})
    out = [*out, ""] if len(out) > 2 else ["(no records with AUROCs yet)", ""]
    return out + [f"- {n}" for n in notes] + ([""] if notes else [])


def small_loss_section(by) -> list[str]:
    """Markdown: CL against its small-loss control (the same number of triplets dropped per
    step, chosen by loss instead of by cosine).

    Example:
        >>> from gradharmony.experiment.summary import fake_record
        >>> by = by_name([fake_record("cl-s0", r10=5.0), fake_record("small-loss-s0", r10=7.0)])
        >>> small_loss_section(by)[-2]
        '| small-loss − cl | +2.0 (n=1) | +0.0 (n=1) | +0.0 (n=1) | +0.0 (n=1) |'
    """
    out = ["## Beyond the paper: the gradient signal against the loss signal", "",
           "`small-loss` drops, at every step, exactly as many triplets as CL's threshold "
           "(cos ≤ γ) would, but those of the highest per-triplet loss l_va + l_vt: the two "
           "rows differ only in *which* triplets go. The loss is free in any training step; "
           "the cosine needs the per-triplet Gramian.", ""]
    out += metric_table(by, ("cl", "small-loss"), list(SUMMARY_METRICS))
    return out + pair_table(by, "small-loss", "cl", list(SUMMARY_METRICS))


def _last_stage_auroc(records, row: str, target: str, score: str) -> list[float]:
    vals = []
    for x in records:
        if x["row"] == row and x.get("conjecture"):
            a = x["conjecture"][-1]["auroc"].get(target, {}).get(score)
            if a:
                vals.append(a[0])
    return vals


def explain_section(records: list[dict]) -> list[str]:
    """Markdown: the numbers of these records that bear on why a result may differ from the
    paper's: how much a method could move retrieval (the seed spread), how well the cosine
    picks the misaligned triplets CL drops, how large the cosines are, what CL drops.

    Example:
        >>> from gradharmony.experiment.summary import fake_record
        >>> recs = [fake_record(f"baseline-s{s}", r10=10.0 + s) for s in range(3)]
        >>> explain_section(recs)[2].startswith("- Seed spread")
        True
    """
    by = by_name(records)
    base = list(row_values(by, "baseline", "R@10").values())
    if not base:
        return []
    m = mean_std(base)[0]
    out = ["## What may explain a difference from the paper", "",
           f"- Seed spread: the baseline's R@10 is {cell(base)} over {len(base)} seeds "
           f"(the paper's Both gain, 17.1 → 25.9 YouCook2 R@10, is about half its baseline; "
           f"half of ours is {m / 2:.1f} points). The clean-data ceiling shows how far "
           "removing all the noise moves it: "
           f"{cell(row_values(by, 'clean-baseline', 'R@10').values())}."]
    cos = {k: _last_stage_auroc(records, "baseline", f"{k}_misaligned", "cos")
           for k in ("text", "audio")}
    loss = {"text": _last_stage_auroc(records, "baseline", "text_misaligned", "loss_vt"),
            "audio": _last_stage_auroc(records, "baseline", "audio_misaligned", "loss_va")}
    if cos["text"]:
        out.append("- The signal CL and Both act on: at the end of the baseline's training, "
                   f"AUROC(−cos) against the ground truth is {cell(cos['text'], 3)} (text) "
                   f"and {cell(cos['audio'], 3)} (audio), where the per-triplet loss reaches "
                   f"{cell(loss['text'], 3)} and {cell(loss['audio'], 3)} (0.5 = chance): "
                   "a cosine threshold drops misaligned triplets barely more often than "
                   "aligned ones here.")
    stages = [x["cosine"]["stages"][-1] for x in records
              if x["row"] == "baseline" and x.get("cosine", {}).get("stages")]
    if stages:
        out.append("- Size of the conflict: in the last stage of the baseline's training the "
                   f"per-triplet cosines have mean {cell([s['mean'] for s in stages], 4)} "
                   f"and standard deviation {cell([s['std'] for s in stages], 4)}: the two "
                   "gradients are nearly orthogonal, so a projection (GR) removes a "
                   "component of about that relative size.")
    cl = [x["cosine"]["stages"] for x in records
          if x["row"] == "cl" and x.get("cosine", {}).get("stages")]
    if cl:
        per = [[st[i].get("kept_frac") for st in cl] for i in range(min(map(len, cl)))]
        kept = " / ".join(cell([k for k in p if k is not None], 3).split(" ±")[0]
                          for p in per)
        out.append(f"- Budget: γ rises from −0.3 to 0 over the 200 steps; CL keeps {kept} of "
                   "the triplets per stage (mean over seeds), so it trains like the baseline "
                   "for most of the run.")
    out.append("- Scale and data: a 2-layer, 128-wide model on 3,200 synthetic clips, "
               "against VATT-MA-Medium on 136M HowTo100M clips; the synthetic noise kinds are "
               "known (docs/synthetic.md), the paper's are not.")
    return [*out, ""]


def cost_section(records: list[dict]) -> list[str]:
    """Markdown: what the recorded training cost (wall time of each run's training, from the
    records; evaluation not included).

    Example:
        >>> cost_section([{"train": {"wall_s": 3600.0}}, {"train": {"wall_s": 1800.0}}])[2]
        '- 2 runs trained for 1.50 h in all (0.75 h, 45 min per run on average).'
    """
    walls = [r.get("train", {}).get("wall_s") for r in records]
    walls = [w for w in walls if w]
    if not walls:
        return []
    total, mean = sum(walls), sum(walls) / len(walls)
    return ["## Cost", "",
            f"- {len(walls)} runs trained for {total / 3600:.2f} h in all ({mean / 3600:.2f} h, "
            f"{mean / 60:.0f} min per run on average).",
            "- Each run trains with one thread; the study runs two at a time on the 2-core "
            "machine (`--seeds`/`--only` split it between processes), so its wall time is "
            "about half the total above, plus evaluation (a few minutes per run). "
            "Trade-offs made to fit: a 2-layer, 128-wide model, 200 steps of 32 clips, 3 "
            "seeds, one data seed per setting.",
            ""]


def scale(records: list[dict]) -> str:
    """The size of the recorded runs, read from the first record's resolved config.

    Example:
        >>> scale([{"resolved": {"model": {"kwargs": {"depth": 2, "width": 128}},
        ...         "steps": 200, "batch_size": 32}, "seed": 0,
        ...         "data": {"train": [{"train_clips": 3200}]}}])
        'a 2-layer, 128-wide model trained 200 steps of 32 clips on 3200 training clips, 1 seed(s)'
    """
    recs = [r for r in records if "resolved" in r]
    if not recs:
        return "no records yet"
    cfg = recs[0]["resolved"]
    kw = cfg.get("model", {}).get("kwargs", {})
    clips = recs[0].get("data", {}).get("train", [{}])[0].get("train_clips")
    seeds = len({r["seed"] for r in recs})
    return (f"a {kw.get('depth', '?')}-layer, {kw.get('width', '?')}-wide model trained "
            f"{cfg.get('steps')} steps of {cfg.get('batch_size')} clips on {clips} training "
            f"clips, {seeds} seed(s)")


def data_section() -> list[str]:
    """Markdown: the data folders, how each is made, and what every table trains on."""
    return ["## Data and runs", "",
            "`DATA` (default `data/study`) holds one folder per data set, each made by "
            "`gradharmony make-data synthetic` (`--make-data` runs what is missing):", "",
            *[f"- `{c}`" for c in make_data_commands("DATA")], "",
            "Table 1: every method (sample granularity), `both-batch` (batch granularity, the "
            "paper's Algorithm 1 as written) on `noisy/train`, and `clean-baseline` on "
            "`clean/train` (the same videos, aligned). Table 2 (`gradharmony experiment "
            "table2`): `mix` trains on `noisy/train` + `sound/train` as a text-free set "
            "(`has_text: false`, the video–audio loss only), `wild` adds `wild/train` (more "
            "text and audio noise), equal weights. The γ runs (`gradharmony experiment "
            "gamma`): `cl-g0` is CL with (γ0, γ_end) = (0, 0). `small-loss` (in Table 1, beyond "
            "the paper) drops at every step as many triplets as CL's threshold would, but those "
            "of the highest loss l_va + l_vt. Table 3 (`gradharmony experiment table3`): "
            "`ms-*` is the modality-specific model (`model.modality_agnostic=false`: one "
            "backbone per modality, so the two losses share only the video backbone) on "
            "`noisy/train`. Every run is evaluated with `gradharmony eval --tasks "
            "retrieval,probe --data DATA/noisy`.", ""]


def render(records: list[dict], expected: dict[str, list[str]], command: str,
           figure: str | None = None) -> str:
    """The document's markdown from ``records``; ``expected``: every table's run names;
    ``figure``: the path of Figure 4 relative to the document (None: not drawn)."""
    by = by_name(records)
    names = [n for runs in expected.values() for n in runs]
    missing = [n for n in names if n not in by]
    md = ["# Results: the paper's Tables 1, 2 and 3 on the study preset", "",
          "Generated from the run records in the records folder (never edited by hand). "
          "Regenerate it (no training) with:", "", "```bash", command, "```", "",
          "Train, evaluate and record what is missing (a recorded run is skipped; a "
          "half-trained one resumes): `make table1` (`gradharmony experiment table1 "
          "--make-data --finetune baseline,both`), then `make table2` (`gradharmony "
          "experiment table2` and `gradharmony experiment gamma`), `make table3` (`gradharmony "
          "experiment table3`).", "",
          "How to read it: every run is `configs/study.yaml` with one method and one training "
          "seed; a cell is the mean ± sample standard deviation over seeds. A difference to "
          "the baseline is paired by seed (the same seed in both rows), shown as the mean "
          "difference and its 95 % Student-t interval over seeds (t quantile with n − 1 "
          "degrees of freedom). It is **bold** only where the interval excludes 0, i.e. "
          "where the difference exceeds the seed-to-seed spread of the differences; an "
          "interval of zero width (every seed moved by the same amount) measures no spread "
          "and is never bold. "
          "Retrieval is on the clean retrieval split of the noisy data folder for every run "
          "(the same videos); R@10 and MedR in the summary tables are the means of both "
          "directions.", "",
          f"Records: {len(records)} of {len(names)} expected runs."
          + (f" Missing: {compact_names(missing)}." if missing else ""), ""]
    md += data_section()
    md += ["## Table 1: methods on the noisy study data", ""]
    md += metric_table(by, TABLE1_ROWS, list(RUN_METRICS))
    tuned = {run_row(r["run"]) for r in records if r.get("eval", {}).get("finetune")}
    md += ["Fine-tuning (the rows fine-tuned, `--finetune`; top-1 on the action and sound "
           "test splits):", ""]
    md += metric_table(by, [r for r in TABLE1_ROWS if r in tuned], list(FINETUNE_METRICS))
    again = sorted((r["run"], r["retrained"]) for r in records if r.get("retrained"))
    if again:
        md += ["Runs trained again to be fine-tuned (each record holds the new run):", "",
               *[f"- {run}: {note}" for run, note in again], ""]
    md += ["## Table 2: noisier data (baseline, GR, CL, Both)", "",
           "Settings: `noisy` (Table 1's runs), `mix` (+ a text-free sound set, "
           "`has_text: false`), `wild` (+ a wilder narrated set).", ""]
    md += metric_table(by, TABLE2_ROWS, list(SUMMARY_METRICS))
    md += ["The gain over the setting's baseline, R@10 (claim 4: does it grow with noisier "
           "data?):", "", *gain_table(by)]
    md += ["## γ schedules (CL)", "", "`cl`: (γ0, γ_end) = (−0.3, 0); `cl-g0`: (0, 0).", ""]
    md += metric_table(by, GAMMA_ROWS, list(SUMMARY_METRICS))
    md += pair_table(by, "cl", "cl-g0", list(SUMMARY_METRICS))
    md += small_loss_section(by)
    md += ["## Table 3: the modality-specific backbone (baseline, GR)", ""]
    md += metric_table(by, TABLE3_ROWS, list(SUMMARY_METRICS))
    md += pair_table(by, "ms-baseline", "baseline", list(SUMMARY_METRICS))
    md += ["## Figure 4: per-triplet cosine over training", ""]
    md += [f"![Figure 4]({figure})", ""] if figure else ["(no records with cosines yet)", ""]
    md += ["## Mean cosine per data setting", "",
           "The mean of the logged per-triplet cos(g_va, g_vt) over training; a cosine of "
           "exactly 0 (one gradient is zero: a triplet of a text-free set, or without sound) "
           "is left out.", "", *cosine_table(records)]
    md += ["## Kept fraction (CL, Both, small-loss)", "", *kept_table(records)]
    md += ["## The conjecture over training: AUROC of −cos against the ground truth", "",
           "Positive class: misaligned triplets (narration or sound), from the logged "
           "per-triplet cosines and losses of training (train mode, the batches training "
           "saw).", "", *conjecture_section(records)]
    md += explain_section(records)
    md += cost_section(records)
    md += ["## Verdicts", "", "Rules: see `gradharmony.experiment.verdicts` (a comparison "
           "counts only where its 95 % interval excludes 0).", ""]
    for v in verdicts(records, expected):
        md.append(f"{v['claim']}. *{v['text']}*: **{v['status']}**"
                  + (f". {v['numbers']}." if v["numbers"] else "."))
    md += ["", f"Scale: {scale(records)}, against VATT-MA-Medium on HowTo100M (+ AudioSet, "
           "YT8M) in the paper. A claim that is \"not resolved\" here may hold at a larger "
           "scale; one that \"does not hold\" fails for this data and budget only.", ""]
    return "\n".join(md)


def write_results(records_root, doc, expected: dict[str, list[str]], command: str) -> Path:
    """Read every record under ``records_root``, draw Figure 4 there and write ``doc``."""
    from gradharmony.experiment.figure4 import figure4
    from gradharmony.experiment.records import read_records

    records = read_records(records_root)
    doc = Path(doc)
    fig_path = Path(records_root) / FIGURE
    rows = [*TABLE1_ROWS, "cl-g0", *TABLE2_ROWS[len(TABLE2_METHODS):], *TABLE3_ROWS]
    drawn = []
    if records:
        fig_path.parent.mkdir(parents=True, exist_ok=True)
        drawn = figure4(records, fig_path, rows)
    rel = os.path.relpath(fig_path, doc.parent if str(doc.parent) else ".") if drawn else None
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(records, expected, command, rel))
    return doc
