"""``gradharmony make-data synthetic``: write the synthetic tri-modal benchmark as shards.

Example:
    >>> main(["synthetic", "--help"])  # doctest: +ELLIPSIS
    usage: gradharmony make-data synthetic ...
    0
"""

from __future__ import annotations

import sys

from gradharmony.cli import Parser, at_least, writable_path
from gradharmony.data.synthetic.plan import PRESETS, ClipSize, noise_config

KINDS = ("synthetic",)


def _parser() -> Parser:
    p = Parser(
        prog="gradharmony make-data synthetic",
        description="Generate the synthetic tri-modal benchmark (rendered videos with sound and "
                    "narrations, ground-truth misalignment, clean evaluation splits) as "
                    "WebDataset shards. See docs/synthetic.md.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (same seed = same bytes)")
    p.add_argument("--clips", type=at_least(1), default=3200,
                   help="training clips (default 3200)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="howto",
                   help="training-set misalignment preset: clean 0/0, howto ~50%% text noise, "
                        "wild more text and audio noise (default howto)")
    p.add_argument("--text-noise", type=float, help="fraction of misaligned narrations")
    p.add_argument("--audio-noise", type=float, help="fraction of replaced audio tracks")
    p.add_argument("--shift-fraction", type=float,
                   help="of misaligned narrations, the share shifted to a neighbour segment "
                        "(the rest are off-topic)")
    p.add_argument("--music-fraction", type=float,
                   help="of replaced audio tracks, the share replaced by music "
                        "(the rest by an unrelated event's sound)")
    p.add_argument("--retrieval-clips", type=int, default=500)
    p.add_argument("--probe-clips", type=int, nargs=2, default=(600, 400),
                   metavar=("TRAIN", "TEST"), help="action/sound classification clips")
    p.add_argument("--av-clips", type=int, nargs=2, default=(400, 200),
                   metavar=("TRAIN", "TEST"), help="audio-visual classification clips")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--size", type=int, default=64, help="frame height = width in pixels")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--clips-per-shard", type=int, default=250)
    p.add_argument("--workers", type=int, default=2, help="rendering processes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``gradharmony make-data``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"gradharmony make-data: missing the kind of data; expected one of {KINDS} "
              "(see `gradharmony make-data --help`)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(f"usage: gradharmony make-data {{{','.join(KINDS)}}} [options]\n\n"
              "kinds:\n  synthetic  the synthetic tri-modal benchmark "
              "(`gradharmony make-data synthetic --help`)")
        return 0
    if argv[0] not in KINDS:
        print(f"gradharmony make-data: unknown kind {argv[0]!r}; expected one of {KINDS}",
              file=sys.stderr)
        return 2
    parser = _parser()
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:
        return int(exc.code or 0)
    from gradharmony.data.synthetic.generate import generate

    try:
        writable_path("--out", args.out, "folder")
        noise = noise_config(args.preset, text_noise=args.text_noise,
                             audio_noise=args.audio_noise, shift_fraction=args.shift_fraction,
                             music_fraction=args.music_fraction)
        size = ClipSize(args.frames, args.fps, args.size, args.sample_rate)
        info = generate(args.out, seed=args.seed, clips=args.clips, noise=noise, size=size,
                        retrieval=args.retrieval_clips, probe=tuple(args.probe_clips),
                        av=tuple(args.av_clips), clips_per_shard=args.clips_per_shard,
                        workers=args.workers, progress=not args.quiet,
                        overwrite=args.overwrite)
    except (ValueError, RuntimeError) as exc:
        print(f"gradharmony make-data synthetic: error: {exc}", file=sys.stderr)
        return 2
    r = info["splits"]["train"]["rates"]
    print(f"wrote {args.out}: {info['splits']['train']['clips']} train clips "
          f"(text noise {r['text_noise']:.3f}, audio noise {r['audio_noise']:.3f}), "
          f"{info['splits']['retrieval']['clips']} retrieval, "
          f"{sum(args.probe_clips)} action/sound, {sum(args.av_clips)} av "
          f"in {info['seconds']:.1f} s")
    return 0
