"""The experiment grid of ``train-av --table``: methods x fusions x optimizers x seeds.

Every finished run is appended to ``runs.jsonl`` in the output folder (the grid resumes
from it), then :func:`markdown_tables` summarises mean +- std and :func:`plot_balance`
draws the discrepancy ratio and the OGM coefficients over training.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from gradharmony.balance.trainer import MODALITIES, AVConfig, train_av

MULTIMODAL = ("joint", "ogm", "ogm-ge", "gblend", "mdrop", "umt", "atf")


def grid_configs(base: AVConfig, methods, fusions, optimizers, seeds) -> list[AVConfig]:
    """One config per cell; uni-modal methods do not depend on the fusion (run once).

    Example:
        >>> cfgs = grid_configs(AVConfig(), ["audio", "joint"], ["sum", "concat"], ["sgd"], [0])
        >>> [(c.method, c.extra["fusion_label"]) for c in cfgs]
        [('audio', '-'), ('joint', 'sum'), ('joint', 'concat')]
    """
    out = []
    for seed in seeds:
        for opt in optimizers:
            for method in methods:
                fus = ["-"] if method in MODALITIES else list(fusions)
                for f in fus:
                    out.append(replace(base, method=method, fusion=f if f != "-" else "concat",
                                       optimizer=opt, seed=seed, progress=False,
                                       extra={**base.extra, "fusion_label": f}))
    return out


def _key(cfg: AVConfig) -> str:
    return f"{cfg.method}|{cfg.extra.get('fusion_label', cfg.fusion)}|{cfg.optimizer}|{cfg.seed}"


def run_grid(train: dict, test: dict, configs: list[AVConfig], out_dir: str,
             keep_history_for=("joint", "ogm", "ogm-ge")) -> list[dict]:
    """Run every config not yet in ``out_dir/runs.jsonl``; return all records."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "runs.jsonl")
    done = {}
    if os.path.exists(path):
        with open(path) as fh:
            for line in fh:
                rec = json.loads(line)
                done[rec["key"]] = rec
    for cfg in tqdm(configs, desc="train-av table"):
        key = _key(cfg)
        if key in done:
            continue
        t0 = time.time()
        res = train_av(train, test, cfg)
        hist = res["history"]
        rec = {"key": key, "method": cfg.method, "fusion": cfg.extra.get("fusion_label"),
               "optimizer": cfg.optimizer, "seed": cfg.seed, "acc": res["acc"],
               "seconds": round(time.time() - t0, 2),
               "probe": res["probe"], "unimodal_acc": res["unimodal_acc"],
               "gblend_weights": hist["gblend_weights"],
               "mean_rho": {m: float(np.mean(v)) for m, v in hist["rho"].items() if v}}
        if res["umt_teachers"]:
            rec["umt_teacher_acc"] = {m: t["acc"] for m, t in res["umt_teachers"].items()}
        if hist["atf_factor"]:
            rec["mean_atf_factor"] = {m: float(np.mean(v)) for m, v in hist["atf_factor"].items()}
            rec["atf_factor_per_epoch"] = {
                m: [float(np.mean([f for f, e in zip(v, hist["epoch_of_step"]) if e == ep]))
                    for ep in range(cfg.epochs)] for m, v in hist["atf_factor"].items()}
        if cfg.method in keep_history_for:
            rec["rho"] = hist["rho"]
            rec["coef"] = hist["coef"]
            rec["epoch_of_step"] = hist["epoch_of_step"]
        with open(path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        done[key] = rec
    return [done[_key(c)] for c in configs]


def _fmt(values) -> str:
    v = 100 * np.asarray(values, dtype=float)
    return f"{v.mean():.1f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.1f}"


def markdown_tables(records: list[dict]) -> str:
    """Mean ± std (over seeds) of test accuracy and per-encoder probe accuracy, in percent.

    Example:
        >>> recs = [{"method": "joint", "fusion": "sum", "optimizer": "sgd", "acc": a,
        ...          "probe": {"audio": 0.8, "visual": 0.4}} for a in (0.5, 0.7)]
        >>> print(markdown_tables(recs).splitlines()[4])
        | joint | sum | 60.0 ± 14.1 | 80.0 ± 0.0 | 40.0 ± 0.0 | – |
    """
    cells = defaultdict(list)
    order = []
    for r in records:
        k = (r["optimizer"], r["method"], r["fusion"])
        if k not in cells:
            order.append(k)
        cells[k].append(r)
    lines = []
    for opt in dict.fromkeys(k[0] for k in order):
        lines += [f"### Optimizer: {opt}", "",
                  "| method | fusion | test acc (%) | audio probe (%) | visual probe (%) "
                  "| mean ρ_audio |",
                  "|---|---|---|---|---|---|"]
        for k in order:
            if k[0] != opt:
                continue
            rs = cells[k]
            probes = [_fmt([r["probe"][m] for r in rs]) if m in rs[0]["probe"] else "–"
                      for m in MODALITIES]
            rho = [r["mean_rho"]["audio"] for r in rs if r.get("mean_rho")]
            rho_txt = f"{np.mean(rho):.2f}" if rho else "–"
            lines.append(f"| {k[1]} | {k[2]} | {_fmt([r['acc'] for r in rs])} | "
                         f"{probes[0]} | {probes[1]} | {rho_txt} |")
        lines.append("")
    return "\n".join(lines)


def plot_balance(records: list[dict], path: str, fusion: str = "concat",
                 optimizer: str = "sgd", seed: int = 0) -> str | None:
    """Plot rho_audio (joint, OGM, OGM-GE) and both OGM coefficients per step to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in records if r.get("rho") and r["fusion"] == fusion
           and r["optimizer"] == optimizer and r["seed"] == seed]
    if not sel:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in sel:
        rho = np.asarray(r["rho"]["audio"], dtype=float)
        k = max(1, len(rho) // 100)
        smooth = np.convolve(rho, np.ones(k) / k, mode="valid")
        color = {"joint": "C0", "ogm": "C1", "ogm-ge": "C2"}.get(r["method"])
        axes[0].plot(smooth, label=r["method"], color=color)
        if r["method"] == "joint":
            continue
        axes[1].plot(r["coef"]["audio"], label=f"{r['method']} audio", lw=0.8, color=color)
        axes[1].plot(r["coef"]["visual"], ls=":", color=color,
                     label=f"{r['method']} visual", lw=0.8)
    axes[0].axhline(1.0, color="grey", lw=0.5)
    axes[0].set(title=r"discrepancy ratio $\rho^{audio}$ (moving mean)", xlabel="step")
    axes[1].set(title="OGM coefficients $k$ (audio solid, visual dotted)", xlabel="step",
                ylim=(0, 1.05))
    for ax in axes:
        ax.legend()
    fig.suptitle(f"{fusion} fusion, {optimizer}, seed {seed}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_atf_factors(records: list[dict], path: str) -> str | None:
    """Plot ATF's per-epoch learning-rate factor of each modality (mean over seeds), one
    panel per optimizer and a line per fusion, to ``path``; None without ATF records."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in records if r["method"] == "atf" and r.get("atf_factor_per_epoch")]
    if not sel:
        return None
    opts = list(dict.fromkeys(r["optimizer"] for r in sel))
    fig, axes = plt.subplots(1, len(opts), figsize=(5 * len(opts), 3.4), squeeze=False)
    for ax, opt in zip(axes[0], opts):
        fusions = list(dict.fromkeys(r["fusion"] for r in sel if r["optimizer"] == opt))
        for i, fusion in enumerate(fusions):
            rs = [r for r in sel if r["optimizer"] == opt and r["fusion"] == fusion]
            for m, ls in zip(MODALITIES, ("-", ":")):
                f = np.mean([r["atf_factor_per_epoch"][m] for r in rs], axis=0)
                ax.plot(np.arange(1, len(f) + 1), f, ls=ls, color=f"C{i}",
                        label=f"{fusion} {m}")
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.set(title=f"ATF factors, {opt} (mean over {len(rs)} seeds)", xlabel="epoch",
               ylabel="learning-rate factor λ")
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
