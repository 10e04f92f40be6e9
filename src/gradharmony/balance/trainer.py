"""Training and evaluation of one audio-visual classifier with a balancing method.

Methods: ``audio`` / ``visual`` (uni-modal baselines), ``joint`` (naive late fusion),
``ogm`` / ``ogm-ge`` (:mod:`gradharmony.balance.ogm`), ``gblend``
(:mod:`gradharmony.balance.gblend`, online), ``mdrop`` (:mod:`gradharmony.balance.mdrop`),
``umt`` (uni-modal teachers, :mod:`gradharmony.balance.umt`) and ``atf`` (adaptive tracking
factor on the encoders' learning rates, :mod:`gradharmony.balance.atf`).
The data are pre-extracted feature sequences (:mod:`gradharmony.balance.features`):
``{"train": {"audio": [n, T, D], "visual": [n, T', D'], "label": [n]}, "test": {...}}``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from gradharmony.balance.atf import ATFConfig, TrackingFactor
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
from gradharmony.balance.umt import (
    check_teachers,
    data_fingerprint,
    distillation_loss,
    distillation_targets,
    load_teacher,
    save_teacher,
    teacher_cache_key,
)

METHODS = ("audio", "visual", "joint", "ogm", "ogm-ge", "gblend", "mdrop", "umt", "atf")
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
    umt_weight: float = 1.0
    umt_teacher_epochs: int | None = None   # None: the student's epochs
    umt_cache_dir: str | None = None        # where teachers are cached (None: not cached)
    atf_rate: float = 0.05
    atf_power: float = 1.0
    atf_smoothing: float = 0.9
    atf_init: float = 1.0
    atf_min: float = 0.05
    atf_max: float = 10.0
    atf_signal: str = "head"
    progress: bool = True
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr is not None and not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr (--lr) must be a finite number > 0, got {self.lr}")
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
        if self.method == "umt":
            if not (isinstance(self.umt_weight, (int, float)) and np.isfinite(self.umt_weight)
                    and self.umt_weight > 0):
                raise ValueError(f"umt_weight (--umt-weight) must be a finite number > 0, "
                                 f"got {self.umt_weight!r}")
            if self.umt_teacher_epochs is not None and self.umt_teacher_epochs < 1:
                raise ValueError(f"umt_teacher_epochs (--umt-teacher-epochs) must be >= 1, "
                                 f"got {self.umt_teacher_epochs}")
        if self.method == "atf":
            self.atf_config()

    def atf_config(self) -> ATFConfig:
        """The :class:`ATFConfig` of the ``atf_*`` fields (validates them)."""
        return ATFConfig(self.atf_rate, self.atf_power, self.atf_smoothing, self.atf_init,
                         self.atf_min, self.atf_max, self.atf_signal)

    @property
    def base_lr(self) -> float:
        """``lr``, or the optimizer's default when it is None."""
        return self.lr if self.lr is not None else (0.05 if self.optimizer == "sgd" else 2e-3)

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
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(200, 4, generator=g); y = (x[:, 0] > 0).long()
        >>> linear_probe(x[:100], y[:100], x[100:], y[100:]) > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression

    tr, te = standardize(torch.as_tensor(train_x).float(), torch.as_tensor(test_x).float())
    clf = LogisticRegression(max_iter=1000, random_state=seed)
    clf.fit(tr.numpy(), np.asarray(train_y))
    return float(clf.score(te.numpy(), np.asarray(test_y)))


def train_teachers(train: dict, test: dict, cfg: AVConfig) -> tuple[dict, dict]:
    """UMT's uni-modal teachers: ``({m: encoder}, {m: info})``, trained or read from cache.

    Teacher m is the ``method=m`` baseline of ``cfg`` (same seed, optimizer, learning rate,
    weight decay, batch size, encoder and size; ``umt_teacher_epochs`` epochs). With
    ``cfg.umt_cache_dir`` its weights are cached there under a digest of all of these, the
    number of classes and a fingerprint of the training inputs of m and the labels; ``info``
    says whether it came from the cache and its test accuracy.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.randint(3, (64,), generator=g)
        >>> d = {"audio": torch.randn(64, 4, 3, generator=g), "visual": torch.randn(64, 2, 5),
        ...      "label": y}
        >>> enc, info = train_teachers(d, d, AVConfig(method="umt", epochs=1, progress=False))
        >>> sorted(enc), info["visual"]["cached"]
        (['audio', 'visual'], False)
    """
    num_classes = int(cfg.extra.get("num_classes",
                                    int(torch.cat([train["label"], test["label"]]).max()) + 1))
    epochs = cfg.umt_teacher_epochs or cfg.epochs
    encoders, info = {}, {}
    for m in MODALITIES:
        check_batch(train, [m], num_classes)
        settings = {"kind": "umt-teacher", "version": 1, "modality": m, "seed": cfg.seed,
                    "optimizer": cfg.optimizer, "lr": cfg.base_lr,
                    "weight_decay": cfg.weight_decay, "epochs": epochs,
                    "batch_size": cfg.batch_size, "encoder": cfg.encoder, "dim": cfg.dim,
                    "num_classes": num_classes, "input_dim": int(train[m].shape[-1]),
                    "train_data": data_fingerprint(train, [m, "label"])}
        path = None
        if cfg.umt_cache_dir:
            path = os.path.join(cfg.umt_cache_dir,
                                f"umt-teacher-{m}-{teacher_cache_key(settings)}.pt")
        model = AVClassifier({m: settings["input_dim"]}, num_classes, "concat", cfg.encoder,
                             cfg.dim)
        if path and os.path.exists(path):
            state, meta = load_teacher(path)
            if meta.get("settings") != settings:
                raise ValueError(f"teacher cache {path} was written for other settings "
                                 f"({meta.get('settings')}); delete it")
            model.load_state_dict(state)
            info[m] = {"cached": True, "acc": meta["acc"], "path": path}
        else:
            tcfg = replace(cfg, method=m, epochs=epochs, extra=dict(cfg.extra))
            res = train_av(train, test, tcfg)
            model = res["model"]
            info[m] = {"cached": False, "acc": res["acc"], "path": path}
            if path:
                save_teacher(path, model.state_dict(), {"settings": settings, "acc": res["acc"]})
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        encoders[m] = model.encoders[m]
    return encoders, info


def _optimizer(cfg: AVConfig, groups) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.base_lr, momentum=0.9,
                               weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.base_lr, weight_decay=cfg.weight_decay)


def train_av(train: dict, test: dict, cfg: AVConfig, teachers: dict | None = None) -> dict:
    """Train one classifier; return test accuracy, per-encoder probe accuracy and history.

    ``train`` / ``test``: ``{"audio": [n, T, D], "visual": [n, T', D'], "label": [n]}``
    (already standardised, see :func:`prepare_splits`). The returned dict has ``acc`` (fused
    test accuracy), ``probe`` (modality -> linear-probe test accuracy on that encoder's
    features), ``unimodal_acc`` (the uni-modal heads' test accuracy, G-Blend only trains them),
    and ``history``: per step ``rho`` / ``coef`` (modality -> list), per epoch ``loss``,
    ``train_acc`` and, for G-Blend, ``gblend_weights``; for ATF ``atf_factor`` (modality ->
    the learning-rate factor of every step). ``teachers`` (UMT only): modality -> frozen
    teacher encoder, one per modality; None trains them (:func:`train_teachers`).

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
    if teachers is not None and cfg.method != "umt":
        raise ValueError(f"teachers are only used by method 'umt', not {cfg.method!r}")
    teacher_info, targets = {}, None
    if cfg.method == "umt":
        if teachers is None:
            teachers, teacher_info = train_teachers(train, test, cfg)
        check_teachers(teachers, mods)
        targets = distillation_targets(teachers, train, mods)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    dims = {m: int(train[m].shape[-1]) for m in mods}
    model = AVClassifier(dims, num_classes, cfg.fusion, cfg.encoder, cfg.dim)
    fit, held, fit_probe = train, None, None
    if cfg.method == "gblend":
        perm = torch.randperm(len(train["label"]), generator=gen)
        n_held = max(1, int(round(cfg.gblend_holdout * len(perm))))
        held, fit = _subset(train, perm[:n_held]), _subset(train, perm[n_held:])
        fit_probe = _subset(fit, torch.arange(min(len(fit["label"]), 4 * n_held)))
    run = _AVTraining.start(cfg, model, gen, targets)
    bar = tqdm(range(cfg.epochs), desc=f"train-av {cfg.method}/{cfg.fusion}",
               disable=not cfg.progress, leave=False)
    for epoch in bar:
        if cfg.method == "gblend" and epoch % cfg.gblend_super_epoch == 0:
            run.update_gblend_weights(fit_probe, held)
        loss, acc = run.epoch(fit, epoch)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
    return _results(model, train, test, cfg, run.hist, teacher_info)


def _results(model: AVClassifier, train: dict, test: dict, cfg: AVConfig, hist: dict,
             teacher_info: dict) -> dict:
    mods = cfg.modalities
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
        "umt_teachers": teacher_info,
        "model": model,
    }


@dataclass
class _AVTraining:
    """One :func:`train_av` run between steps: the model, its optimizer, the balancing
    method's state and the history."""

    cfg: AVConfig
    model: AVClassifier
    gen: torch.Generator
    opt: torch.optim.Optimizer
    tracker: TrackingFactor | None
    ogm: OGMConfig | None
    ogm_params: dict
    targets: dict | None
    weights: dict
    hist: dict
    snapshot: tuple | None = None

    @classmethod
    def start(cls, cfg: AVConfig, model: AVClassifier, gen: torch.Generator,
              targets: dict | None) -> _AVTraining:
        mods = cfg.modalities
        tracker = None
        if cfg.method == "atf":
            atf = cfg.atf_config()
            tracker = TrackingFactor(mods, atf.rate, atf.power, atf.smoothing, atf.init,
                                     atf.min_factor, atf.max_factor)
            enc_ids = {id(p) for m in mods for p in model.encoders[m].parameters()}
            groups = [{"params": list(model.encoders[m].parameters()), "modality": m,
                       "lr": cfg.base_lr * atf.init} for m in mods]
            groups.append({"params": [p for p in model.parameters() if id(p) not in enc_ids],
                           "modality": None})
            opt = _optimizer(cfg, groups)
        else:
            opt = _optimizer(cfg, model.parameters())
        ogm, ogm_params = None, {}
        if cfg.method in ("ogm", "ogm-ge"):
            ogm = OGMConfig(cfg.alpha, cfg.form, cfg.method == "ogm-ge", tuple(cfg.window),
                            cfg.ogm_params)
            ogm_params = {m: select_parameters(model.encoders[m], ogm.params) for m in mods}
        branches = (*mods, "fused")
        weights = {b: 1.0 / len(branches) for b in branches}
        hist = {"rho": {m: [] for m in mods}, "coef": {m: [] for m in mods}, "loss": [],
                "train_acc": [], "gblend_weights": [], "epoch_of_step": [],
                "atf_factor": {m: [] for m in mods} if tracker else {}}
        return cls(cfg, model, gen, opt, tracker, ogm, ogm_params, targets, weights, hist)

    def update_gblend_weights(self, fit_probe: dict, held: dict) -> None:
        """G-Blend: reweight the branches by their generalisation over the last super-epoch."""
        now = (_branch_losses(self.model, fit_probe), _branch_losses(self.model, held))
        if self.snapshot is not None:
            self.weights = gblend_weights(self.snapshot[0], self.snapshot[1], now[0], now[1])
        self.snapshot = now
        self.hist["gblend_weights"].append(dict(self.weights))

    def epoch(self, fit: dict, epoch: int) -> tuple[float, float]:
        """One pass over ``fit`` in a random order; its mean fused loss and accuracy."""
        n = len(fit["label"])
        perm = torch.randperm(n, generator=self.gen)
        tot_loss, correct = 0.0, 0
        for i in range(0, n, self.cfg.batch_size):
            idx = perm[i:i + self.cfg.batch_size]
            fused, hits = self.step(_subset(fit, idx), idx, epoch)
            tot_loss += fused * len(idx)
            correct += hits
        self.hist["loss"].append(tot_loss / n)
        self.hist["train_acc"].append(correct / n)
        return tot_loss / n, correct / n

    def _loss(self, out: dict, y: torch.Tensor, idx: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
        cfg, mods = self.cfg, self.cfg.modalities
        fused = F.cross_entropy(out["logits"], y)
        loss = fused
        if cfg.method == "gblend":
            loss = self.weights["fused"] * fused + sum(
                self.weights[m] * F.cross_entropy(out["unimodal"][m], y) for m in mods)
        if cfg.method == "umt":
            loss = loss + distillation_loss(out["features"],
                                            {m: self.targets[m][idx] for m in mods},
                                            cfg.umt_weight)
        signal = None
        if self.tracker is not None:
            signal = _atf_signal(self.model, out, y, cfg.atf_signal)
            # the heads are trained on detached features: they measure, never push
            if cfg.atf_signal == "head":
                loss = loss + sum(signal.values())
        return fused, loss, signal

    def step(self, batch: dict, idx: torch.Tensor, epoch: int) -> tuple[float, int]:
        """One optimizer step on ``batch`` (rows ``idx`` of the training set); its fused loss
        and number of correct predictions."""
        cfg, mods, y = self.cfg, self.cfg.modalities, batch["label"]
        drop = None
        if cfg.method == "mdrop":
            drop = modality_drop_masks(len(y), mods, cfg.mdrop_rate, cfg.mdrop_target, self.gen)
        out = self.model(batch, drop=drop)
        fused, loss, signal = self._loss(out, y, idx)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.tracker is not None:
            self._track(signal)
        self._balance(out, y, epoch)
        self.hist["epoch_of_step"].append(epoch)
        self.opt.step()
        return float(fused.detach()), int((out["logits"].argmax(1) == y).sum())

    def _track(self, signal: dict) -> None:
        """ATF: the encoders' learning rates follow the tracking factor."""
        factors = self.tracker.update({m: float(v.detach()) for m, v in signal.items()})
        for group in self.opt.param_groups:
            if group["modality"] is not None:
                group["lr"] = self.cfg.base_lr * factors[group["modality"]]
        for m in self.cfg.modalities:
            self.hist["atf_factor"][m].append(factors[m])

    def _balance(self, out: dict, y: torch.Tensor, epoch: int) -> None:
        """The discrepancy ratios, and OGM's gradient modulation when active."""
        mods = self.cfg.modalities
        coef = {m: 1.0 for m in mods}
        if len(mods) > 1:
            scores = modality_scores(out["slices"], y)
            ratios = discrepancy_ratios(scores)
            for m in mods:
                self.hist["rho"][m].append(ratios[m])
            if self.ogm is not None and self.ogm.active(epoch):
                coef = ogm_coefficients(scores, self.ogm.alpha, self.ogm.form)
                modulate_gradients(self.ogm_params, coef, self.ogm.ge, self.ogm.ge_modalities,
                                   self.gen)
            for m in mods:
                self.hist["coef"][m].append(coef[m])


def _atf_signal(model, out, y, signal: str) -> dict[str, torch.Tensor]:
    """Per-modality loss fed to the tracking factor (see :mod:`gradharmony.balance.atf`)."""
    if signal == "head":
        return {m: F.cross_entropy(model.unimodal[m](f.detach()), y)
                for m, f in out["features"].items()}
    return {m: F.cross_entropy(z, y) for m, z in out["slices"].items()}
