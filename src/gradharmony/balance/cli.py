"""``gradharmony train-av``: balanced audio-visual classification, one run or the table.

Example:
    >>> from gradharmony.balance.cli import build_parser
    >>> build_parser().parse_args(["--method", "ogm-ge", "--alpha", "0.8"]).alpha
    0.8
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gradharmony.balance.data import load_av_features
from gradharmony.balance.fusion import FUSIONS
from gradharmony.balance.trainer import METHODS, OPTIMIZERS, AVConfig, prepare_splits, train_av
from gradharmony.cli import Parser, at_least, positive_float, writable_path


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``train-av``."""
    p = Parser(prog="gradharmony train-av", description=__doc__.splitlines()[0])
    p.add_argument("--method", choices=METHODS, default="joint")
    p.add_argument("--fusion", choices=FUSIONS, default="concat")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd")
    p.add_argument("--lr", type=float, default=None,
                   help="default 0.05 (SGD, momentum 0.9) or 2e-3 (Adam)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="model init / batch order seed")
    p.add_argument("--encoder", default="conv1d", help="encoder registry name")
    p.add_argument("--dim", type=int, default=32, help="encoder feature size")
    p.add_argument("--alpha", type=float, default=0.8, help="OGM modulation strength (>= 0)")
    p.add_argument("--form", choices=("paper", "official"), default="paper",
                   help="paper: 1-tanh(a*relu(rho-1)); official: 1-tanh(a*relu(rho))")
    p.add_argument("--ogm-start", type=int, default=0, help="first modulated epoch")
    p.add_argument("--ogm-end", type=int, default=None, help="first unmodulated epoch after")
    p.add_argument("--ogm-params", choices=("all", "conv"), default="all",
                   help="encoder parameters modulated: all, or conv weights only")
    p.add_argument("--mdrop-rate", type=float, default=0.5)
    p.add_argument("--mdrop-target", default="random", help="audio, visual or random")
    p.add_argument("--gblend-super-epoch", type=int, default=2)
    p.add_argument("--gblend-holdout", type=float, default=0.2)
    p.add_argument("--umt-weight", type=positive_float, default=1.0,
                   help="UMT: weight of the feature distillation loss (> 0)")
    p.add_argument("--umt-teacher-epochs", type=at_least(1), default=None,
                   help="UMT: epochs of each uni-modal teacher (default: --epochs)")
    p.add_argument("--atf-rate", type=float, default=0.05,
                   help="ATF: tracking rate of the factors per step, in (0, 1]")
    p.add_argument("--atf-power", type=float, default=1.0,
                   help="ATF: exponent of the convergence ratios in the target (>= 0)")
    p.add_argument("--atf-smoothing", type=float, default=0.9,
                   help="ATF: moving-average coefficient of the per-modality loss, in [0, 1)")
    p.add_argument("--atf-init", type=float, default=1.0, help="ATF: initial factor (> 0)")
    p.add_argument("--atf-min", type=float, default=0.05, help="ATF: smallest factor (> 0)")
    p.add_argument("--atf-max", type=float, default=10.0, help="ATF: largest factor")
    p.add_argument("--atf-signal", choices=("head", "slice"), default="head",
                   help="ATF: per-modality loss from detached linear heads, or OGM slices")
    p.add_argument("--n-train", type=at_least(1), default=3000)
    p.add_argument("--n-test", type=at_least(1), default=1500)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--frames", type=at_least(1), default=16,
                   help="video frames per clip (8 fps)")
    p.add_argument("--size", type=at_least(1), default=32, help="frame height and width")
    p.add_argument("--cache-dir", default="runs/train-av-cache",
                   help="where extracted features and UMT teachers are cached ('' to disable)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="write result JSON (one run) or table files here")
    p.add_argument("--table", action="store_true",
                   help="run the grid: every method, fusion and optimizer over --seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--fusions", nargs="+", choices=FUSIONS, default=list(FUSIONS))
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> AVConfig:
    """The :class:`AVConfig` described by parsed arguments."""
    return AVConfig(
        method=args.method, fusion=args.fusion, optimizer=args.optimizer, lr=args.lr,
        weight_decay=args.weight_decay, epochs=args.epochs, batch_size=args.batch_size,
        seed=args.seed, encoder=args.encoder, dim=args.dim, alpha=args.alpha, form=args.form,
        window=(args.ogm_start, args.ogm_end), ogm_params=args.ogm_params,
        mdrop_rate=args.mdrop_rate, mdrop_target=args.mdrop_target,
        gblend_super_epoch=args.gblend_super_epoch, gblend_holdout=args.gblend_holdout,
        umt_weight=args.umt_weight, umt_teacher_epochs=args.umt_teacher_epochs,
        umt_cache_dir=os.path.join(args.cache_dir, "umt-teachers") if args.cache_dir else None,
        atf_rate=args.atf_rate, atf_power=args.atf_power, atf_smoothing=args.atf_smoothing,
        atf_init=args.atf_init, atf_min=args.atf_min, atf_max=args.atf_max,
        atf_signal=args.atf_signal, progress=not args.quiet,
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``train-av``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        build_parser().error(str(err))
    for option, path in (("--out", args.out), ("--cache-dir", args.cache_dir)):
        if path:
            writable_path(option, path, "folder")
    torch.set_num_threads(max(1, args.threads))
    t0 = time.time()
    data = load_av_features(args.n_train, args.n_test, seed=args.data_seed,
                            clip={"frames": args.frames, "size": args.size},
                            cache_dir=args.cache_dir or None)
    train, test = prepare_splits(data["train"], data["test"])
    cfg.extra["num_classes"] = len(data["class_names"])
    if args.table:
        from gradharmony.balance.table import (
            grid_configs,
            markdown_tables,
            plot_atf_factors,
            plot_balance,
            run_grid,
        )

        out = args.out or "runs/train-av-table"
        cfgs = grid_configs(cfg, args.methods, args.fusions, args.optimizers, args.seeds)
        records = run_grid(train, test, cfgs, out)
        table = markdown_tables(records)
        with open(os.path.join(out, "table.md"), "w") as fh:
            train_s = sum(r.get("seconds", 0.0) for r in records)
            fh.write(f"data: {data['source']}\n\n{len(records)} runs, {train_s:.0f} s of training "
                     f"(recorded per run); this invocation: {time.time() - t0:.0f} s\n\n"
                     f"{table}\n")
        for fusion in args.fusions:
            for opt in args.optimizers:
                plot_balance(records, os.path.join(out, f"balance_{fusion}_{opt}.png"),
                             fusion, opt, args.seeds[0])
        plot_atf_factors(records, os.path.join(out, "balance_atf_factors.png"))
        print(table)
        return 0
    res = train_av(train, test, cfg)
    summary = {"acc": res["acc"], "probe": res["probe"], "unimodal_acc": res["unimodal_acc"],
               "data": data["source"], "seconds": round(time.time() - t0, 1)}
    if res["umt_teachers"]:
        summary["umt_teachers"] = res["umt_teachers"]
    print(json.dumps(summary, indent=1))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        hist = {k: v for k, v in res["history"].items()}
        with open(os.path.join(args.out, "result.json"), "w") as fh:
            json.dump({**summary, "config": res["config"], "history": hist}, fh)
    return 0
