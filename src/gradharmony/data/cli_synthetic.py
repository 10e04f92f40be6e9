"""``gradharmony make-data synthetic``: write the synthetic tri-modal benchmark as shards.

Example:
    >>> main(["synthetic", "--help"])  # doctest: +ELLIPSIS
    usage: gradharmony make-data synthetic ...
    0
"""

from __future__ import annotations

import sys

from gradharmony.cli import Parser, at_least, writable_path
from gradharmony.data.synthetic.plan import NEIGHBORS, PRESETS, ClipSize, noise_config

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
                   help="training-set misalignment preset: clean 0/0, howto ~50%% text noise "
                        "(mostly shifts to the adjacent segment), wild more text and audio "
                        "noise, study noise a model can perceive (off-topic, other-object "
                        "shifts, unrelated sound; random-clip neighbours) (default howto)")
    p.add_argument("--text-noise", type=float, help="fraction of misaligned narrations")
    p.add_argument("--audio-noise", type=float, help="fraction of replaced audio tracks")
    p.add_argument("--shift-fraction", type=float,
                   help="of misaligned narrations, the share shifted to a neighbour segment "
                        "(the rest are off-topic)")
    p.add_argument("--music-fraction", type=float,
                   help="of replaced audio tracks, the share replaced by music "
                        "(the rest by an unrelated event's sound)")
    p.add_argument("--other-object-share", type=float,
                   help="of the shifts, the share describing the video's other object (the "
                        "rest: the same object in another motion); default: the preset's "
                        "(clean/howto/wild: shift to the adjacent segment, whatever it shows)")
    kinds = p.add_argument_group(
        "per-kind rates", "fractions of all training clips; each replaces that kind's rate of "
        "the preset (not combinable with --text-noise/--shift-fraction/--other-object-share "
        "resp. --audio-noise/--music-fraction)")
    for kind, text in (("same-object-shift", "narration of another segment showing the same "
                        "object in another motion"),
                       ("other-object-shift", "narration of a segment showing the video's "
                        "other object"),
                       ("off-topic", "narration about something else"),
                       ("unrelated-audio", "sound of an event of another shape and motion"),
                       ("music", "music instead of the event's sound")):
        kinds.add_argument(f"--{kind}", type=float, metavar="RATE", help=text)
    p.add_argument("--neighbors", choices=NEIGHBORS,
                   help="MIL-NCE candidates written to each training clip's json: same-video "
                        "(the video's other narrations, nearest first), random (narrations of "
                        "other videos' clips that do not describe the clip's object), none; "
                        "default: the preset's (study: random, others: same-video)")
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
                             music_fraction=args.music_fraction,
                             other_object_share=args.other_object_share,
                             neighbors=args.neighbors,
                             same_object_shift=args.same_object_shift,
                             other_object_shift=args.other_object_shift,
                             off_topic=args.off_topic, unrelated_audio=args.unrelated_audio,
                             music=args.music)
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
    print(format_oracles(info["splits"]["retrieval"].get("oracles", {})), end="")
    return 0


def format_oracles(oracles: dict) -> str:
    """The oracle levels of ``info.json`` as printed lines (empty without oracles).

    Example:
        >>> m = {"R@1": 1.0, "R@5": 5.0, "R@10": 10.0, "MedR": 40.0}
        >>> print(format_oracles({"object": {"video_to_text": m, "text_to_video": m}}), end="")
        oracle retrieval on the retrieval split (expected over ties; V->T | T->V):
          object        R@1 1.0 R@5 5.0 R@10 10.0 MedR 40.0 | R@1 1.0 R@5 5.0 R@10 10.0 MedR 40.0
    """
    names = [n for n, v in oracles.items() if isinstance(v, dict) and "video_to_text" in v]
    if not names:
        return ""
    lines = ["oracle retrieval on the retrieval split (expected over ties; V->T | T->V):"]
    for n in names:
        parts = [" ".join(f"{k} {oracles[n][d][k]:.1f}" for k in ("R@1", "R@5", "R@10", "MedR"))
                 for d in ("video_to_text", "text_to_video")]
        lines.append(f"  {n:<13} {parts[0]} | {parts[1]}")
    return "\n".join(lines) + "\n"
