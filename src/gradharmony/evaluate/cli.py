"""``gradharmony eval`` and ``gradharmony score``.

``eval`` runs the paper's downstream protocols on a trained run and writes ``RUN/eval.json``
(every number next to its protocol) and ``RUN/eval_embeddings.npz`` (the retrieval split's
video/text embeddings, for the report's t-SNE). ``score`` writes per-clip alignment scores.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from gradharmony.cli import Parser, at_least, existing_dir, positive_float, require, writable_path
from gradharmony.errors import InputError, input_errors
from gradharmony.evaluate.clips import ClipSet, iter_clipsets, load_clips, shard_files
from gradharmony.evaluate.probe import stratified_split
from gradharmony.evaluate.retrieval import TIE_RULE, bidirectional_retrieval

TASKS = ("retrieval", "probe", "finetune")
#: classification splits of the synthetic benchmark: name -> (folder, modality)
CLASS_SPLITS = {"video_action": ("action", "video"), "audio_sound": ("sound", "audio")}
DEFAULT_DATA = "data/synthetic"


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    require(name == "cpu" or name.split(":")[0] == "cuda",
            f"--device {name!r}: expected cpu, cuda, cuda:N or auto")
    with input_errors(f"--device {name!r}: ", (RuntimeError,)):
        device = torch.device(name)
    require(device.type == "cpu" or torch.cuda.is_available(),
            f"--device {name!r}: no CUDA GPU on this machine (expected cpu or auto)")
    return device


def _check_run(path: str) -> None:
    """Cheap checks of ``--run`` (before the data): a folder with config.yaml and a
    checkpoint."""
    d = existing_dir("--run", path, "a run directory written by `gradharmony pretrain`")
    require((d / "config.yaml").is_file(), f"--run {path!r}: no config.yaml (expected a run "
            "directory written by `gradharmony pretrain`)")
    require((d / "checkpoints" / "last.pt").is_file(), f"--run {path!r}: no checkpoint "
            "(checkpoints/last.pt); train it first (gradharmony pretrain)")


def _load_run(path: str, device: torch.device, allow_factory: str | None = None):
    """The run of ``--run``; its problems (a checkpoint that is unreadable, refused or does
    not fit the model, a vocabulary too large) are input errors naming the option."""
    import yaml

    from gradharmony.evaluate.run import load_run

    _check_run(path)
    try:
        with input_errors("--run: ", (ValueError, RuntimeError, OSError, yaml.YAMLError)):
            return load_run(path, device, allow_factory=allow_factory)
    except InputError as err:  # a refused run file (RunFileError) names the file, not --run
        if str(err).startswith("--run: "):
            raise
        raise InputError(f"--run: {err}") from err


def _subset(clips: ClipSet, idx: np.ndarray) -> ClipSet:
    return ClipSet(clips.video[idx], clips.audio[idx], clips.has_audio[idx],
                   [clips.texts[i] for i in idx], [clips.neighbors[i] for i in idx],
                   clips.labels[idx], [clips.keys[i] for i in idx],
                   [clips.meta[i] for i in idx], dict(clips.skipped))


def _find_part(root: Path, names: tuple[str, ...]) -> str | None:
    for name in names:
        if (root / name).is_dir():
            return str(root / name)
        files = sorted(str(f) for f in root.glob(f"{name}*.tar"))
        if files:
            return files[0] if len(files) == 1 else str(root / f"{name}*.tar")
    return None


def split_parts(root: str | os.PathLike) -> tuple[str | None, str | None]:
    """(train, test) parts of a classification split folder: ``train``/``test`` (or ``val``)
    sub-folders or ``train*.tar``/``test*.tar`` shards; ``(None, None)`` when it has none.

    Example:
        >>> import tempfile
        >>> split_parts(tempfile.mkdtemp())
        (None, None)
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"split {str(root)!r} does not exist")
    if not root.is_dir():
        return None, None
    tr, te = _find_part(root, ("train",)), _find_part(root, ("test", "val"))
    return (tr, te) if tr and te else (None, None)


def _check_classes(root, labels: np.ndarray) -> None:
    if (labels < 0).any():
        raise InputError(f"split {str(root)!r} has clips without a label (label -1)")
    if np.unique(labels).size < 2:
        raise InputError(f"split {str(root)!r} has a single class "
                         f"({np.unique(labels).tolist()}): classification needs two")


def load_train_test(root: str | os.PathLike, spec, windows: int, limit: int | None,
                    test_fraction: float, seed: int, progress: bool):
    """(train, test, how) clip sets of a classification split folder: its given parts
    (:func:`split_parts`) when present, otherwise a seeded stratified carve of its clips."""
    tr, te = split_parts(root)
    if tr and te:
        return (load_clips(tr, spec, windows, limit, progress),
                load_clips(te, spec, windows, limit, progress), f"given: {tr} / {te}")
    clips = load_clips(root, spec, windows, limit, progress)
    _check_classes(root, clips.labels)
    fit, test = stratified_split(clips.labels, test_fraction, seed)
    how = f"carved: stratified {test_fraction:.0%} test, seed {seed}"
    return _subset(clips, fit), _subset(clips, test), how


def _retrieval(run, args, device) -> tuple[dict, dict]:
    from gradharmony.evaluate.features import encode_split

    path = Path(args.data) / "retrieval"
    part = _find_part(path, ("test",)) if path.is_dir() else None
    with input_errors():  # reading the user's split
        f = encode_split(run.model, part or path, run.spec, args.windows, run.tokenizer,
                         run.text_len, args.batch_size, device, ("video", "text"), args.limit,
                         not args.quiet)
    n = len(f["keys"])
    if n < 2:
        raise InputError(f"the retrieval split {str(path)!r} has {n} clip: "
                         "retrieval needs at least two")
    res = bidirectional_retrieval(torch.from_numpy(f["video_vt"]),
                                  torch.from_numpy(f["text_vt"]))
    res["protocol"] = {"split": str(part or path), "n": n, "windows": args.windows,
                       "embedding": "video_vt / text_vt (own narration), cosine",
                       "window_pooling": "mean of L2-normalised window embeddings, renormalised",
                       "tie_rule": TIE_RULE, "MedR": "1-based median rank",
                       "skipped": f["skipped"]}
    return res, {"video_vt": f["video_vt"], "text_vt": f["text_vt"],
                 "keys": np.array(f["keys"])}


def _probe(run, args, device) -> dict:
    from gradharmony.evaluate.features import encode_split
    from gradharmony.evaluate.probe import linear_probe

    out = {}
    for name, (folder, modality) in CLASS_SPLITS.items():
        root = Path(args.data) / folder
        key = f"{modality}_feat"

        def enc(path, root=root, key=key, modality=modality):
            with input_errors():  # reading the user's split
                f = encode_split(run.model, path, run.spec, args.windows, None, run.text_len,
                                 args.batch_size, device, (modality,), args.limit,
                                 not args.quiet)
            _check_classes(path, f["labels"])
            return f[key], f["labels"]

        tr, te = split_parts(root)
        if tr and te:
            (xtr, ytr), (xte, yte) = enc(tr), enc(te)
            how = f"given: {tr} / {te}"
        else:
            x, y = enc(root)
            fit, test = stratified_split(y, 0.3, args.seed)
            xtr, ytr, xte, yte = x[fit], y[fit], x[test], y[test]
            how = f"carved: stratified 30% test, seed {args.seed}"
        res = linear_probe(xtr, ytr, xte, yte, seed=args.seed)
        proto = {k: res.pop(k) for k in list(res) if k not in ("top1", "top5")}
        proto.update(split=how, feature=f"{key} (frozen, mean over {args.windows} windows)",
                     classifier="sklearn LogisticRegression (lbfgs) on standardised features, "
                                "C chosen on a stratified 20% validation carve of the "
                                "training part, then refit on all of it")
        out[name] = {**res, "protocol": proto}
    return out


def _finetune(run, args, device) -> dict:
    from gradharmony.evaluate.finetune import finetune

    out = {}
    for name, (folder, modality) in CLASS_SPLITS.items():
        with input_errors():  # reading the user's split
            train, test, how = load_train_test(Path(args.data) / folder, run.spec,
                                               args.windows, args.limit, 0.3, args.seed,
                                               not args.quiet)
        res = finetune(run.model, train, test, modality, epochs=args.finetune_epochs,
                       batch_size=args.finetune_batch_size, lr=args.finetune_lr, seed=args.seed,
                       device=device, progress=not args.quiet)
        res["protocol"]["split"] = how
        out[name] = res
    return out


def _eval_parser() -> Parser:
    p = Parser(prog="gradharmony eval", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {', '.join(TASKS)}")
    p.add_argument("--data", default=DEFAULT_DATA,
                   help="folder with the retrieval/, action/ and sound/ splits "
                        f"(default: {DEFAULT_DATA}, the synthetic clean splits)")
    p.add_argument("--windows", type=at_least(1), default=2,
                   help="temporal windows per clip whose embeddings are averaged")
    p.add_argument("--batch-size", type=at_least(1), default=32)
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="at most this many clips per part")
    p.add_argument("--finetune-epochs", type=at_least(1), default=10)
    p.add_argument("--finetune-lr", type=positive_float, default=3e-4,
                   help="backbone learning rate (the head gets 10x)")
    p.add_argument("--finetune-batch-size", type=at_least(1), default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--allow-model-factory", metavar="MODULE:FUNCTION", default=None,
                   help="call this model factory when the run's config.yaml names it "
                        "(model.preset); it runs that function with the run's arguments, so "
                        "give it only for runs you trust")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main_eval(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony eval``; the arguments, the data folder's splits and the
    run are checked before anything is computed or written."""
    args = _eval_parser().parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in TASKS]
    require(not bad and bool(tasks),
            f"--tasks: unknown {bad or 'empty list'}; choose from {', '.join(TASKS)}")
    _check_run(args.run)
    data = existing_dir("--data", args.data, "a folder with retrieval/, action/, sound/ "
                        "splits; make them with `gradharmony make-data`")
    needed = (["retrieval"] if "retrieval" in tasks else []) + (
        [f for f, _ in CLASS_SPLITS.values()] if {"probe", "finetune"} & set(tasks) else [])
    for split in needed:
        require((data / split).exists(), f"--data {args.data!r}: no {split}/ split (needed by "
                f"--tasks {','.join(tasks)}; make it with `gradharmony make-data`)")
    device = _device(args.device)
    torch.manual_seed(args.seed)
    run = _load_run(args.run, device, args.allow_model_factory)
    path = run.dir / "eval.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(run=str(run.dir), checkpoint=str(run.checkpoint), step=run.step,
                  data=str(args.data), method=run.config.get("method"),
                  seed=run.config.get("seed"))
    if "retrieval" in tasks:
        result["retrieval"], emb = _retrieval(run, args, device)
        np.savez(run.dir / "eval_embeddings.npz", **emb)
    if "probe" in tasks:
        result["probe"] = _probe(run, args, device)
    if "finetune" in tasks:
        result["finetune"] = _finetune(run, args, device)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)
    _print_eval(result)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _print_eval(result: dict) -> None:
    if "retrieval" in result:
        for d in ("video_to_text", "text_to_video"):
            m = result["retrieval"][d]
            print(f"retrieval {d}: R@1 {m['R@1']:.1f}  R@5 {m['R@5']:.1f}  "
                  f"R@10 {m['R@10']:.1f}  MedR {m['MedR']:.1f}")
    for task in ("probe", "finetune"):
        for name, m in result.get(task, {}).items():
            print(f"{task} {name}: top1 {m['top1']:.1f}  top5 {m['top5']:.1f}")


def _score_parser() -> Parser:
    from gradharmony.evaluate.order import ORDERS
    from gradharmony.evaluate.scoring import CLUSTERS

    p = Parser(
        prog="gradharmony score", description="per-triplet alignment scores of a data set",
        epilog="Batches: --batch-size triplets whose in-batch negatives are the other clips of "
               "the batch, composed as --order says; each triplet has --k MIL-NCE candidates "
               "(its narration and the first k-1 'neighbors' of KEY.json). The model is in eval "
               "mode; its weights are never changed.")
    p.add_argument("--run", required=True, help="run directory (runs/NAME)")
    p.add_argument("--data", required=True, help="shards: a folder, a glob or a .tar")
    p.add_argument("--out", default=None, help="output .jsonl (default: RUN/scores.jsonl)")
    p.add_argument("--batch-size", type=at_least(2), default=None,
                   help="triplets per batch (in-batch negatives); default: the run's batch size")
    p.add_argument("--order", default=None, choices=ORDERS,
                   help=f"how batches are composed, one of {', '.join(ORDERS)}: 'shuffled' = a "
                        "seeded permutation of all clips (training from the decoded cache, "
                        "data.cache_dir); 'stream' = shards permuted, then the run's "
                        "data.shuffle_buffer-clip shuffle buffer (training from the tars); "
                        "'shard' = consecutive clips in shard order (whole videos per batch); "
                        "'one-per-video' = no two clips of a video in a batch. Default: as the "
                        "run's training composed them (shuffled with a cache_dir, else stream)")
    p.add_argument("--k", type=at_least(1), default=None,
                   help="MIL-NCE candidates per triplet (default: the run's data.candidates)")
    p.add_argument("--scope", default="all",
                   help="parameters of the gradient cosine 'cos': 'all' (every trainable "
                        "parameter, the Harmonizer's own cosine), 'shared' (the parameters both "
                        "losses reach) or a module prefix such as 'backbone'. The "
                        "embedding-level cosine 'cos_emb' is always written")
    p.add_argument("--kinds", default=None,
                   help="comma list of misalignment kinds (text_noise/audio_noise values of "
                        "KEY.json) to report AUROCs for; default: every kind the data holds")
    p.add_argument("--cluster", default="video", choices=CLUSTERS,
                   help="what the bootstrap resamples whole: videos (video_id), batches, or "
                        "clips (i.i.d.)")
    p.add_argument("--limit", type=at_least(1), default=None,
                   help="score at most this many clips")
    p.add_argument("--n-boot", type=at_least(1), default=1000,
                   help="bootstrap resamples for the CIs")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch order and bootstrap")
    p.add_argument("--allow-model-factory", metavar="MODULE:FUNCTION", default=None,
                   help="call this model factory when the run's config.yaml names it "
                        "(model.preset); it runs that function with the run's arguments, so "
                        "give it only for runs you trust")
    p.add_argument("--examples", type=at_least(0, float), default=0.05,
                   help="fraction of clips kept at each end for the report's contact sheet "
                        "(0: none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _examples(data, spec, rows: list[dict], fraction: float, path: Path) -> None:
    """Frames of the top and bottom ``fraction`` clips by cosine (report Figure 3), decoded
    again in a second pass so that scoring never holds the whole data set in memory."""
    order = np.argsort([r["cos"] for r in rows], kind="stable")
    m = max(1, int(round(fraction * len(rows))))
    picks = {"bottom": order[:m], "top": order[::-1][:m]}
    wanted = {rows[i]["key"] for idx in picks.values() for i in idx}
    frames: dict[str, np.ndarray] = {}
    for part in iter_clipsets(data, spec, 1, 64, None, False):
        for j, key in enumerate(part.keys):
            if key in wanted:
                v = part.video[j, 0]
                t = np.linspace(0, v.shape[0] - 1, min(4, v.shape[0])).round().astype(int)
                frames[key] = v[t]
    out = {}
    for name, idx in picks.items():
        out[f"{name}_frames"] = np.stack([frames[rows[i]["key"]] for i in idx])
        out[f"{name}_index"] = idx
    np.savez_compressed(path, **out)


def main_score(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony score``; the arguments, the shards and the run are checked
    before anything is computed or written."""
    from gradharmony.evaluate.clips import RawClips
    from gradharmony.evaluate.order import same_video_pairs, training_order
    from gradharmony.evaluate.scoring import detection_aurocs, score_clips

    args = _score_parser().parse_args(argv)
    require(args.examples <= 0.5, f"--examples: expected a fraction in [0, 0.5], "
            f"got {args.examples}")
    kinds = [x.strip() for x in args.kinds.split(",") if x.strip()] if args.kinds else None
    _check_run(args.run)
    with input_errors("--data: "):
        shard_files(args.data)
    if args.out:
        writable_path("--out", args.out, "file")
    device = _device(args.device)
    run = _load_run(args.run, device, args.allow_model_factory)
    if args.scope not in ("all", "shared"):  # a prefix: checked before any clip is decoded
        from gradharmony.evaluate.gradients import scope_parameters

        with input_errors():
            scope_parameters(run.model, args.scope)
    batch_size = args.batch_size or int(run.config.get("batch_size", 64))
    require(batch_size >= 2, f"--batch-size: expected >= 2 (in-batch negatives); the run's "
            f"batch size is {batch_size}")
    k = args.k if args.k is not None else run.candidates
    order = args.order or training_order(run.config)
    buffer = int((run.config.get("data") or {}).get("shuffle_buffer", 64))
    with input_errors("--data: "):
        clips = RawClips(args.data, args.limit)
    require(len(clips) > 0, f"--data {args.data!r} holds no clip with a video")
    flags = [f for f in ("text_aligned", "audio_aligned") if all(f in m for m in clips.meta)]
    if kinds is not None:
        require(bool(flags), f"--kinds: the data at {args.data!r} holds no ground-truth flags "
                "(text_aligned / audio_aligned in KEY.json)")
        present = {str(m[f]) for m in clips.meta for f in ("text_noise", "audio_noise") if f in m}
        bad = [x for x in kinds if x not in present]
        require(not bad, f"--kinds: {bad} not found in the metadata; the data holds "
                f"{sorted(present) or 'no text_noise/audio_noise kinds'}")
    rows = score_clips(run.model, clips, run.tokenizer, batch_size, k, run.text_len,
                       float(run.config.get("model", {}).get("temperature", 0.07)), device,
                       not args.quiet, order=order, scope=args.scope, seed=args.seed,
                       shuffle_buffer=buffer, spec=run.spec)
    out = Path(args.out) if args.out else run.dir / "scores.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    aurocs = detection_aurocs(rows, n_boot=args.n_boot, seed=args.seed, cluster=args.cluster,
                              kinds=kinds)
    batches = {}
    for r in rows:
        batches.setdefault(r["batch"], []).append(r["video"])
    pairs = same_video_pairs(list(batches.values()))
    summary = {"run": str(run.dir), "step": run.step, "data": str(args.data), "n": len(rows),
               "batch_size": batch_size, "order": order,
               "order_default": args.order is None, "shuffle_buffer": buffer, "k": k,
               "scope": args.scope, "seed": args.seed, "cluster": args.cluster,
               "same_video_pairs_per_batch": pairs, "granularity": "sample",
               "model_mode": "eval", "skipped": clips.skipped, "auroc": aurocs,
               "auroc_positive_class": "misaligned (ground-truth flag false)",
               "score_directions": "low cos, low sim, high loss = misaligned"}
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2))
    if args.examples > 0 and rows:
        _examples(args.data, run.spec, rows, args.examples, out.with_suffix(".examples.npz"))
    print(f"scored {len(rows)} clips in batches of {batch_size} (order {order}, k {k}, "
          f"scope {args.scope}; {pairs:.1f} same-video pairs per batch) -> {out}")
    if not aurocs:
        print("no ground-truth alignment flags with both classes: AUROC not computed")
    for target, scores in aurocs.items():
        print(f"AUROC for {target} (95% {args.cluster} bootstrap CI, {args.n_boot} resamples, "
              f"seed {args.seed}):")
        for score, r in scores.items():
            print(f"  {score:>8}: {r['auroc']:.3f}  [{r['low']:.3f}, {r['high']:.3f}]  "
                  f"(n={r['n']}, misaligned={r['n_pos']})")
    return 0
