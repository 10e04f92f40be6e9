"""Training and evaluation of one audio-visual classifier with a balancing method.

Methods: ``audio`` / ``visual`` (uni-modal baselines), ``joint`` (naive late fusion),
``ogm`` / ``ogm-ge`` (:mod:`gradharmony.balance.ogm`), ``gblend``
(:mod:`gradharmony.balance.gblend`, online) and ``mdrop`` (:mod:`gradharmony.balance.mdrop`).
The data are pre-extracted feature sequences (:mod:`gradharmony.balance.features`):
``{"train": {"audio": [n, T, D], "visual": [n, T', D'], "label": [n]}, "test": {...}}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gradharmony.balance.features import standardize
from gradharmony.balance.gblend import gblend_weights
from gradharmony.balance.mdrop import modality_drop_masks
from gradharmony.balance.model import AVClassifier, check_batch
from gradharmony.balance.ogm import (
    OGMConfig,
    discrepancy_ratios,
    modality_scores,
    modulate_gradients,
    ogm_coefficients,
    select_parameters,
)

METHODS = ("audio", "visual", "joint", "ogm", "ogm-ge", "gblend", "mdrop")
MODALITIES = ("audio", "visual")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class AVConfig:
    """All settings of one ``train-av`` run (see ``gradharmony train-av --help``)."""

    method: str = "joint"
    fusion: str = "concat"
    optimizer: str = "sgd"
    lr: float | None = None            # None: 0.05 for SGD (momentum 0.9), 2e-3 for Adam
    weight_decay: float = 1e-4
    epochs: int = 12
    batch_size: int = 64
    seed: int = 0
    encoder: str = "conv1d"
    dim: int = 32
    alpha: float = 0.8
    form: str = "paper"
    window: tuple[int, int | None] = (0, None)
    ogm_params: str = "all"
    mdrop_rate: float = 0.5
    mdrop_target: str = "random"
    gblend_super_epoch: int = 2
    gblend_holdout: float = 0.2
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}")
        if self.method in ("ogm", "ogm-ge"):
            OGMConfig(self.alpha, self.form, self.method == "ogm-ge", tuple(self.window),
                      self.ogm_params)
        if self.method == "mdrop":
            if self.mdrop_target not in ("random", *MODALITIES):
                raise ValueError(f"mdrop_target must be 'random' or one of {MODALITIES}, "
                                 f"got {self.mdrop_target!r}")
            if not 0.0 <= self.mdrop_rate <= 1.0:
                raise ValueError(f"mdrop_rate must be in [0, 1], got {self.mdrop_rate}")
        if self.method == "gblend" and not 0.0 < self.gblend_holdout < 1.0:
            raise ValueError(f"gblend_holdout must be in (0, 1), got {self.gblend_holdout}")
        if self.method == "gblend" and self.gblend_super_epoch < 1:
            raise ValueError(f"gblend_super_epoch must be >= 1, got {self.gblend_super_epoch}")

    @property
    def modalities(self) -> tuple[str, ...]:
        return (self.method,) if self.method in MODALITIES else MODALITIES


def prepare_splits(train: dict, test: dict, modalities=MODALITIES) -> tuple[dict, dict]:
    """Standardise the feature sequences of both splits with the training statistics.

    Example:
        >>> tr = {"audio": torch.randn(8, 3, 2) + 5, "label": torch.zeros(8, dtype=torch.long)}
        >>> a, _ = prepare_splits(tr, dict(tr), ["audio"])
        >>> abs(float(a["audio"].mean())) < 1e-5
        True
    """
    tr, te = {"label": train["label"]}, {"label": test["label"]}
    for m in modalities:
        for name, split in (("train", train), ("test", test)):
            if m not in split:
                raise ValueError(f"{name} split is missing modality {m!r} (keys: {sorted(split)})")
        tr[m], te[m] = standardize(train[m].float(), test[m].float())
    return tr, te


def _subset(data: dict, idx: torch.Tensor) -> dict:
    return {k: v[idx] for k, v in data.items() if torch.is_tensor(v)}


@torch.no_grad()
def _forward_all(model, data, batch_size=512) -> dict:
    model.eval()
    outs = [model(_subset(data, torch.arange(i, min(i + batch_size, len(data["label"])))))
            for i in range(0, len(data["label"]), batch_size)]
    model.train()
    return {
        "logits": torch.cat([o["logits"] for o in outs]),
        "features": {m: torch.cat([o["features"][m] for o in outs]) for m in model.modalities},
        "unimodal": {m: torch.cat([o["unimodal"][m] for o in outs]) for m in model.modalities},
    }


def _branch_losses(model, data) -> dict[str, float]:
    out = _forward_all(model, data)
    y = data["label"]
    losses = {m: float(F.cross_entropy(z, y)) for m, z in out["unimodal"].items()}
    losses["fused"] = float(F.cross_entropy(out["logits"], y))
    return losses


def linear_probe(train_x, train_y, test_x, test_y, seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe on frozen features (standardised).

    Example:
        >>> x = torch.randn(200, 4); y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:100], y[:100], x[100:], y[100:]) > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression

    tr, te = standardize(torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float())
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(tr.numpy(), np.asarray(train_y))
    return float(clf.score(te.numpy(), np.asarray(test_y)))


def train_av(train: dict, test: dict, cfg: AVConfig) -> dict:
    """Train one classifier; return test accuracy, per-encoder probe accuracy and history.

    ``train`` / ``test``: ``{"audio": [n, T, D], "visual": [n, T', D'], "label": [n]}``
    (already standardised, see :func:`prepare_splits`). The returned dict has ``acc`` (fused
    test accuracy), ``probe`` (modality -> linear-probe test accuracy on that encoder's
    features), ``unimodal_acc`` (the uni-modal heads' test accuracy, G-Blend only trains them),
    and ``history``: per step ``rho`` / ``coef`` (modality -> list), per epoch ``loss``,
    ``train_acc`` and, for G-Blend, ``gblend_weights``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randint(3, (96,), generator=g)
        >>> d = {"audio": torch.randn(96, 4, 3, generator=g) + y.view(-1, 1, 1),
        ...      "visual": torch.randn(96, 2, 5, generator=g), "label": y}
        >>> r = train_av(d, d, AVConfig(method="ogm-ge", epochs=2, progress=False))
        >>> sorted(r["probe"]), len(r["history"]["rho"]["audio"])
        (['audio', 'visual'], 4)
    """
    mods = cfg.modalities
    labels = torch.cat([train["label"], test["label"]])
    num_classes = int(cfg.extra.get("num_classes", int(labels.max()) + 1))
    check_batch(train, mods, num_classes)
    check_batch(test, mods, num_classes)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dims = {m: int(train[m].shape[-1]) for m in mods}
    model = AVClassifier(dims, num_classes, cfg.fusion, cfg.encoder, cfg.dim)

    fit, held = train, None
    if cfg.method == "gblend":
        perm = torch.randperm(len(train["label"]), generator=gen)
        n_held = max(1, int(round(cfg.gblend_holdout * len(perm))))
        held, fit = _subset(train, perm[:n_held]), _subset(train, perm[n_held:])
        fit_probe = _subset(fit, torch.arange(min(len(fit["label"]), 4 * n_held)))
    lr = cfg.lr if cfg.lr is not None else (0.05 if cfg.optimizer == "sgd" else 2e-3)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)

    ogm = None
    if cfg.method in ("ogm", "ogm-ge"):
        ogm = OGMConfig(cfg.alpha, cfg.form, cfg.method == "ogm-ge", tuple(cfg.window),
                        cfg.ogm_params)
        ogm_params = {m: select_parameters(model.encoders[m], ogm.params) for m in mods}
    branches = (*mods, "fused")
    weights = {b: 1.0 / len(branches) for b in branches}
    hist = {"rho": {m: [] for m in mods}, "coef": {m: [] for m in mods}, "loss": [],
            "train_acc": [], "gblend_weights": [], "epoch_of_step": []}
    snapshot = None
    n = len(fit["label"])
    bar = tqdm(range(cfg.epochs), desc=f"train-av {cfg.method}/{cfg.fusion}",
               disable=not cfg.progress, leave=False)
    for epoch in bar:
        if cfg.method == "gblend" and epoch % cfg.gblend_super_epoch == 0:
            now = (_branch_losses(model, fit_probe), _branch_losses(model, held))
            if snapshot is not None:
                weights = gblend_weights(snapshot[0], snapshot[1], now[0], now[1])
            snapshot = now
            hist["gblend_weights"].append(dict(weights))
        perm = torch.randperm(n, generator=gen)
        tot_loss, correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            batch = _subset(fit, perm[i:i + cfg.batch_size])
            y = batch["label"]
            drop = None
            if cfg.method == "mdrop":
                drop = modality_drop_masks(len(y), mods, cfg.mdrop_rate, cfg.mdrop_target, gen)
            out = model(batch, drop=drop)
            fused = F.cross_entropy(out["logits"], y)
            if cfg.method == "gblend":
                loss = weights["fused"] * fused + sum(
                    weights[m] * F.cross_entropy(out["unimodal"][m], y) for m in mods)
            else:
                loss = fused
            opt.zero_grad(set_to_none=True)
            loss.backward()
            coef = {m: 1.0 for m in mods}
            if len(mods) > 1:
                scores = modality_scores(out["slices"], y)
                ratios = discrepancy_ratios(scores)
                for m in mods:
                    hist["rho"][m].append(ratios[m])
                if ogm is not None and ogm.active(epoch):
                    coef = ogm_coefficients(scores, ogm.alpha, ogm.form)
                    modulate_gradients(ogm_params, coef, ogm.ge, ogm.ge_modalities, gen)
                for m in mods:
                    hist["coef"][m].append(coef[m])
            hist["epoch_of_step"].append(epoch)
            opt.step()
            tot_loss += float(fused.detach()) * len(y)
            correct += int((out["logits"].argmax(1) == y).sum())
        hist["loss"].append(tot_loss / n)
        hist["train_acc"].append(correct / n)
        bar.set_postfix(loss=f"{tot_loss / n:.3f}", acc=f"{correct / n:.3f}")

    out_tr, out_te = _forward_all(model, train), _forward_all(model, test)
    yte = test["label"]
    return {
        "config": asdict(cfg),
        "acc": float((out_te["logits"].argmax(1) == yte).float().mean()),
        "unimodal_acc": {m: float((out_te["unimodal"][m].argmax(1) == yte).float().mean())
                         for m in mods},
        "probe": {m: linear_probe(out_tr["features"][m], train["label"],
                                  out_te["features"][m], yte, cfg.seed) for m in mods},
        "history": hist,
        "model": model,
    }
