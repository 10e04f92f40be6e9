"""``gradharmony make-shards`` and ``gradharmony build-vocab``.

Example:
    >>> main_build_vocab(["--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: 0
"""

from __future__ import annotations

import json
import sys

from gradharmony.cli import (
    Parser,
    at_least,
    existing_dir,
    existing_file,
    positive_float,
    writable_path,
)
from gradharmony.data.narrations import narrations


def main_make_shards(argv: list[str] | None = None) -> int:
    """Cut clips listed in a caption manifest out of a folder of videos into shards."""
    p = Parser(
        prog="gradharmony make-shards",
        description="Turn a folder of videos plus a caption manifest (CSV or JSONL with path, "
                    "start, end, text) into WebDataset shards (KEY.mp4/KEY.txt/KEY.json).")
    p.add_argument("--videos", required=True, help="folder the manifest paths are relative to")
    p.add_argument("--manifest", required=True, help="captions.csv or captions.jsonl")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--clips-per-shard", type=at_least(1), default=100)
    p.add_argument("--prefix", default="shard", help="shard file prefix (PREFIX-000000.tar)")
    p.add_argument("--fps", type=positive_float, default=None,
                   help="re-sample to this frame rate")
    p.add_argument("--short-side", type=at_least(2), default=None,
                   help="resize to this short side")
    p.add_argument("--audio-rate", type=at_least(1), default=16000)
    p.add_argument("--max-neighbors", type=at_least(0), default=8)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    from gradharmony.data.make_shards import make_shards

    try:
        existing_dir("--videos", args.videos, "the folder the manifest paths are relative to")
        existing_file("--manifest", args.manifest, "a captions.csv or captions.jsonl")
        writable_path("--out", args.out, "folder")
        summary = make_shards(args.videos, args.manifest, args.out,
                              clips_per_shard=args.clips_per_shard, prefix=args.prefix,
                              fps=args.fps, short_side=args.short_side,
                              audio_rate=args.audio_rate, max_neighbors=args.max_neighbors,
                              progress=not args.quiet)
    except (FileNotFoundError, ValueError) as exc:
        print(f"gradharmony make-shards: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"clips": summary["clips"], "shards": len(summary["shards"]),
                      "skipped": summary["skipped"]}))
    if summary["clips"] == 0:
        print("gradharmony make-shards: no clip written", file=sys.stderr)
        return 1
    return 0


def main_build_vocab(argv: list[str] | None = None) -> int:
    """Build the narration vocabulary (HF ``tokenizers`` JSON) from training shards."""
    p = Parser(
        prog="gradharmony build-vocab",
        description="Build the word-level narration vocabulary from the .txt of training shards.")
    p.add_argument("--shards", nargs="+", required=True,
                   help="shard paths, patterns or URLs (https://..., 'pipe:CMD', s3://...)")
    p.add_argument("--out", required=True, help="vocab.json to write")
    p.add_argument("--min-freq", type=at_least(1), default=1)
    p.add_argument("--max-size", type=at_least(1), default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    from gradharmony.data.text import TextTokenizer

    writable_path("--out", args.out, "file")
    skipped: dict[str, int] = {}
    try:
        texts = list(narrations(args.shards, progress=not args.quiet, skipped=skipped))
    except ValueError as exc:
        print(f"gradharmony build-vocab: --shards: {exc}", file=sys.stderr)
        return 2
    if not texts:
        print(f"gradharmony build-vocab: no narration in {args.shards} (shards that failed: "
              f"{skipped or 'none'})", file=sys.stderr)
        return 1
    tok = TextTokenizer.from_texts(texts, min_freq=args.min_freq, max_size=args.max_size)
    tok.save(args.out)
    print(json.dumps({"narrations": len(texts), "vocab_size": tok.vocab_size,
                      "out": args.out, "failed_shards": skipped}))
    return 0
