"""``gradharmony experiment table1|table2|gamma``: the paper's Tables 1 and 2 (and the γ
schedules) on the study preset, resumable from committed records.

For every run of the table (:mod:`gradharmony.experiment.tables`) that has no record in
``RECORDS/TABLE/NAME.json``: train it in ``OUT`` (resuming a half-trained run), evaluate it
(``gradharmony eval --tasks retrieval,probe`` on ``DATA/noisy``'s clean evaluation splits,
the same videos for every run) and write its record (:mod:`gradharmony.experiment.records`).
A run whose record holds the same resolved config is skipped entirely, even when ``OUT`` is
gone; a record of another config is an error naming ``--records``. Then the results document
is always regenerated from every record present (:mod:`gradharmony.experiment.results`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from gradharmony.cli import Parser, at_least, require, writable_path
from gradharmony.errors import InputError
from gradharmony.experiment.driver import Experiment, ExperimentError, RunSpec
from gradharmony.experiment.records import (
    BINS,
    HIST_RANGE,
    STAGES,
    compact_aurocs,
    cosine_stages,
    data_info,
    eval_summary,
    record_path,
    recorded,
    write_record,
)
from gradharmony.experiment.tables import (
    DEFAULT_DATA,
    SEEDS,
    STUDY_CONFIG,
    data_overrides,
    gamma_runs,
    make_data_commands,
    run_row,
    run_setting,
    table1_runs,
    table2_runs,
    table3_runs,
)

EVAL_TASKS = "retrieval,probe"
DEFAULT_RECORDS = "docs/results"
DEFAULT_DOC = "docs/results.md"


@dataclass(frozen=True)
class Table:
    """One table of the study: its runs (a function of ``DATA`` and the seeds) and the data
    folders under ``DATA`` they need."""

    name: str
    default_out: str
    folders: tuple[str, ...]

    def runs(self, data: str, seeds) -> list[RunSpec]:
        if self.name == "table1":
            return table1_runs(data, seeds)
        if self.name == "table2":
            return table2_runs(data, seeds)
        if self.name == "table3":
            return table3_runs(seeds)
        return gamma_runs(seeds)


TABLES = {"table1": Table("table1", "runs/table1", ("noisy", "clean")),
          "table2": Table("table2", "runs/table2", ("noisy", "sound", "wild")),
          "gamma": Table("gamma", "runs/gamma", ("noisy",)),
          "table3": Table("table3", "runs/table3", ("noisy",))}


def expected_runs(data: str = DEFAULT_DATA, seeds=SEEDS) -> dict[str, list[str]]:
    """Every table's run names for ``seeds`` (what the verdicts need).

    Example:
        >>> {t: len(v) for t, v in expected_runs(seeds=(0,)).items()}
        {'table1': 10, 'table2': 8, 'gamma': 1, 'table3': 2}
    """
    return {t: [s.name for s in tab.runs(data, seeds)] for t, tab in TABLES.items()}


def select_runs(specs: list[RunSpec], only: list[str] | None) -> list[RunSpec]:
    """The runs named by ``--only`` (run names such as ``gr-s0`` or rows such as ``gr``);
    an unknown name is an :class:`InputError`.

    Example:
        >>> [s.name for s in select_runs(table1_runs(seeds=(0, 1)), ["gr", "cl-s1"])]
        ['gr-s0', 'gr-s1', 'cl-s1']
    """
    if not only:
        return specs
    names = {s.name for s in specs} | {run_row(s.name) for s in specs}
    bad = [n for n in only if n not in names]
    if bad:
        rows = sorted({run_row(s.name) for s in specs})
        raise InputError(f"--only: unknown run or method {bad}; choose runs such as "
                         f"{specs[0].name!r} or rows {rows}")
    return [s for s in specs if s.name in only or run_row(s.name) in only]


def _eval(run_dir: Path, eval_data: str, step: int, log, tasks: str = EVAL_TASKS) -> dict:
    from gradharmony.evaluate.cli import main_eval

    path = run_dir / "eval.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if (old.get("step") == step and old.get("data") == str(eval_data)
                and all(t in old for t in tasks.split(","))):
            return old
    log(f"[study] {run_dir.name}: evaluating ({tasks}) on {eval_data}")
    main_eval(["--run", str(run_dir), "--data", str(eval_data), "--tasks", tasks, "--quiet"])
    return json.loads(path.read_text())


def build_record(table: str, exp: Experiment, spec: RunSpec, eval_data: str,
                 stages: int = STAGES, n_boot: int = 200, truth_cache: dict | None = None
                 ) -> dict:
    """The record of a trained run of ``exp`` (its evaluation must be in ``eval.json``)."""
    from gradharmony.experiment.records import config_sha256
    from gradharmony.report.conjecture import (
        TruthClash,
        run_rows,
        stage_aurocs,
        training_truth_paths,
    )
    from gradharmony.train.rundir import load_conflict_records, read_metrics

    resolved = exp.resolved(spec)
    run_dir = exp.run_dir(spec)
    meta = json.loads((run_dir / "experiment.json").read_text())
    result = json.loads((run_dir / "eval.json").read_text())
    paths = training_truth_paths(resolved)
    logged = load_conflict_records(run_dir)
    cos = {t: r["cos"] for t, r in logged.items()}
    conj, note = None, None
    if resolved.get("granularity") != "sample":
        note = (f"no AUROC: granularity={resolved.get('granularity')} logs one cosine per "
                "batch or group, not one per triplet")
    else:
        try:
            rows = run_rows(run_dir, resolved, truth_cache, logged)
            conj = compact_aurocs(stage_aurocs(rows, stages, n_boot=n_boot, seed=0))
        except TruthClash as err:
            note = f"no AUROC: {err}"
    summary = meta.get("summary", {})
    return {"format": 1, "table": table, "run": spec.name, "row": run_row(spec.name),
            "setting": run_setting(spec.name), "method": resolved.get("method"),
            "seed": resolved.get("seed"), "granularity": resolved.get("granularity"),
            "gamma": [resolved.get("gamma0"), resolved.get("gamma_end")],
            "overrides": list(spec.overrides), "base_overrides": list(exp.base),
            "config": exp.config, "resolved": resolved, "config_sha256": config_sha256(resolved),
            "data": {"train": [{**d, "has_text": m.get("has_text", True),
                                "weight": m.get("weight")}
                               for d, m in zip(data_info(str(Path(p).parent) for p in paths),
                                               resolved["data"]["mixture"], strict=True)],
                     "eval": data_info([eval_data])[0]},
            "train": {k: summary.get(k) for k in ("steps", "wall_s", "clips_per_s", "loss",
                                                  "cos_mean", "kept_frac")},
            "eval": eval_summary(result),
            "cosine": {"bins": [-HIST_RANGE, HIST_RANGE, BINS],
                       "stages": cosine_stages(cos, read_metrics(run_dir), stages)},
            "conjecture": conj, "conjecture_note": note}


def retrain_note(old: dict, new: dict) -> str:
    """How a run trained again (to add fine-tuning) compares with its earlier record: the
    evaluation both hold must agree, or the note names what moved.

    Example:
        >>> retrain_note({"eval": {"probe": {"a": 1.0}}}, {"eval": {"probe": {"a": 1.0},
        ...                                                         "finetune": {}}})
        'trained again: the same retrieval and probe results as the earlier record'
    """
    moved = [k for k in old.get("eval", {}) if old["eval"][k] != new["eval"].get(k)]
    if not moved:
        return "trained again: the same retrieval and probe results as the earlier record"
    return (f"trained again: {', '.join(moved)} differ from the earlier record (training is "
            "not bitwise reproducible here); the record now holds the new run's results")


def run_table(table: str, out, data: str = DEFAULT_DATA, records=DEFAULT_RECORDS,
              seeds=SEEDS, only=None, doc=DEFAULT_DOC, train: bool = True,
              stages: int = STAGES, n_boot: int = 200, progress: bool = False,
              overrides=(), finetune=(), log=print) -> dict:
    """Train, evaluate and record what is missing of ``table``, then rewrite ``doc`` from
    every record under ``records``. Returns ``{"recorded": [...], "skipped": [...],
    "missing": [...]}`` (missing: not trained, with ``train=False``). ``overrides``: extra
    config overrides of every run (part of the resolved config each record holds);
    ``finetune``: rows whose runs are also fine-tuned (``gradharmony eval --tasks finetune``)
    before they are recorded."""
    from gradharmony.experiment.results import write_results

    tab = TABLES[table]
    specs = select_runs(tab.runs(data, seeds), only)
    done: dict[str, list[str]] = {"recorded": [], "skipped": [], "missing": []}
    out = Path(out)
    eval_data = f"{data}/noisy"
    exp = None
    if train or (out / "experiment.json").is_file():
        exp = Experiment(table, STUDY_CONFIG, out,
                         [*data_overrides(data, "noisy"), *overrides], log=log)
    if exp is not None:  # a record of another config stops the study before any training
        for spec in specs:
            recorded(record_path(records, table, spec.name), exp.resolved(spec))
    truth: dict = {}
    for spec in specs:
        path = record_path(records, table, spec.name)
        if exp is None:
            (done["skipped"] if path.is_file() else done["missing"]).append(spec.name)
            continue
        tune = run_row(spec.name) in finetune
        old = None
        if recorded(path, exp.resolved(spec)):
            old = json.loads(path.read_text())
            if not tune or "finetune" in old.get("eval", {}):
                log(f"[{table}] {spec.name}: recorded, skipped")
                done["skipped"].append(spec.name)
                continue
            log(f"[{table}] {spec.name}: recorded without fine-tuning: training it again "
                "(or resuming) to fine-tune it")
        if not train and exp.state(spec) != "finished":
            done["missing"].append(spec.name)
            continue
        exp.train(spec, progress=progress)
        tasks = EVAL_TASKS + (",finetune" if tune else "")
        _eval(exp.run_dir(spec), eval_data, int(exp.resolved(spec)["steps"]), log, tasks)
        record = build_record(table, exp, spec, eval_data, stages, n_boot, truth)
        if old is not None:
            record["retrained"] = retrain_note(old, record)
            log(f"[{table}] {spec.name}: {record['retrained']}")
        write_record(path, record)
        log(f"[{table}] {spec.name}: recorded in {path}")
        done["recorded"].append(spec.name)
    if doc:
        write_results(records, doc, expected_runs(data, seeds),
                      command=regenerate_command(records, doc, data, seeds))
        log(f"[{table}] wrote {doc}")
    return done


def regenerate_command(records, doc, data, seeds) -> str:
    """The command that rewrites the document from the records alone.

    Example:
        >>> regenerate_command("R", "R.md", "D", (0, 1, 2))
        'gradharmony experiment table1 --no-train --records R --doc R.md --data D --seeds 0,1,2'
    """
    return (f"gradharmony experiment table1 --no-train --records {records} --doc {doc} "
            f"--data {data} --seeds {','.join(map(str, seeds))}")


def _parser(table: str) -> Parser:
    tab = TABLES[table]
    p = Parser(prog=f"gradharmony experiment {table}",
               description=f"Train, evaluate and record the runs of {table}; rewrite the "
                           "results document from every record.")
    p.add_argument("--out", default=tab.default_out,
                   help=f"training folder (default {tab.default_out})")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help=f"data folder holding {', '.join(f + '/' for f in tab.folders)} "
                        f"(default {DEFAULT_DATA})")
    p.add_argument("--records", default=DEFAULT_RECORDS,
                   help=f"records folder; records go to RECORDS/{table}/NAME.json "
                        f"(default {DEFAULT_RECORDS})")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="comma list of training seeds (two processes can share a study "
                        "by seeds)")
    p.add_argument("--only", default=None,
                   help="comma list of run names (gr-s0) or rows (gr) to run")
    p.add_argument("--doc", default=DEFAULT_DOC, help=f"results document (default "
                                                      f"{DEFAULT_DOC})")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing; evaluate and record runs already trained (e.g. by "
                        "another process), rewrite the document")
    p.add_argument("--stages", type=at_least(1), default=STAGES,
                   help="training stages of the cosine statistics and AUROCs")
    p.add_argument("--n-boot", type=at_least(1), default=200,
                   help="bootstrap resamples of the stage AUROCs")
    p.add_argument("--finetune", default="",
                   help="comma list of rows (e.g. baseline,both) whose runs are also "
                        "fine-tuned on the action and sound splits before they are recorded")
    p.add_argument("--make-data", action="store_true",
                   help="generate the missing data folders first (gradharmony make-data "
                        "synthetic; the recipes of gradharmony.experiment.tables)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override of every run (repeatable; a smoke test at "
                        "another size, e.g. --set steps=20): not the study")
    p.add_argument("--progress", action="store_true", help="training progress bars")
    return p


def make_data(data: str, folders) -> None:
    """Generate the data ``folders`` of ``DATA`` (:func:`make_data_commands`)."""
    import shlex

    from gradharmony.cli import main as cli_main

    for command in make_data_commands(data, folders):
        print(command, file=sys.stderr)
        rc = cli_main(shlex.split(command)[1:])
        if rc:
            raise InputError(f"--make-data: `{command}` failed (exit status {rc})")


def _seeds(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--seeds: expected a comma list of integers, got {text!r}") from None
    require(bool(vals), "--seeds: empty list")
    require(len(set(vals)) == len(vals), f"--seeds: repeated seed in {text!r}")
    return vals


def main(table: str, argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony experiment TABLE``."""
    if table not in TABLES:
        raise InputError(f"unknown table {table!r}; choose from {', '.join(TABLES)}")
    args = _parser(table).parse_args(argv)
    seeds = _seeds(args.seeds)
    only = [x.strip() for x in args.only.split(",") if x.strip()] if args.only else None
    finetune = [x.strip() for x in args.finetune.split(",") if x.strip()]
    rows = {run_row(s.name) for s in TABLES[table].runs(args.data, seeds)}
    require(set(finetune) <= rows, f"--finetune: unknown rows "
            f"{sorted(set(finetune) - rows)}; choose from {sorted(rows)}")
    select_runs(TABLES[table].runs(args.data, seeds), only)  # names checked before any work
    require(not args.set or (args.records != DEFAULT_RECORDS and args.doc != DEFAULT_DOC),
            "--set: runs of another config must not mix with the study's records and "
            f"document: give --records and --doc (not {DEFAULT_RECORDS}, {DEFAULT_DOC})")
    writable_path("--records", args.records, "folder")
    writable_path("--doc", args.doc, "file")
    if not args.no_train:
        writable_path("--out", args.out, "folder")
        missing = [f for f in TABLES[table].folders if not (Path(args.data) / f).is_dir()]
        if missing and args.make_data:
            make_data(args.data, missing)
            missing = []
        require(not missing, f"--data {args.data!r}: no {', '.join(missing)} folder; make "
                "it with --make-data or: " + "; ".join(make_data_commands(args.data, missing)))
    try:
        run_table(table, args.out, args.data, args.records, seeds, only, args.doc,
                  train=not args.no_train, stages=args.stages, n_boot=args.n_boot,
                  progress=args.progress, overrides=args.set, finetune=finetune,
                  log=lambda m: print(m, file=sys.stderr))
    except ExperimentError as err:  # a folder or record of another config: bad input
        raise InputError(str(err)) from None
    return 0


def main_table1(argv: list[str] | None = None) -> int:
    """``gradharmony experiment table1``."""
    return main("table1", argv)


def main_table2(argv: list[str] | None = None) -> int:
    """``gradharmony experiment table2``."""
    return main("table2", argv)


def main_gamma(argv: list[str] | None = None) -> int:
    """``gradharmony experiment gamma``."""
    return main("gamma", argv)


def main_table3(argv: list[str] | None = None) -> int:
    """``gradharmony experiment table3``."""
    return main("table3", argv)
