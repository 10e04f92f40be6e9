"""Render planned clips and write the benchmark as WebDataset shards, plus ``info.json``.

Layout under ``out_dir`` (every split in the shard layout of docs/data.md)::

    train/train-000000.tar ...          noisy training clips (the chosen rates)
    retrieval/retrieval-000000.tar ...  clean video-text pairs
    action/train-*.tar, action/test-*.tar   video classification, label = motion (8 classes)
    sound/train-*.tar,  sound/test-*.tar    audio classification, label = timbre (7 classes)
    av/train-*.tar,     av/test-*.tar       audio-visual classification, audio dominant
    info.json                           sizes, rates asked and obtained, classes, counts, seed,
                                        oracle retrieval levels of the retrieval split

``action`` and ``sound`` hold the same clean clips (same keys and mp4 bytes) labelled two ways;
their train and test parts come from different videos. ``av`` clips have no ``.txt``
(a set without narration). ``info.json`` is written last: its presence means the data set is
complete.

Rendering is split over a process pool; every clip is rendered from its own seed, so the bytes
do not depend on the number of workers.

Example:
    >>> import json, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     info = generate(d, seed=0, clips=6, retrieval=2, probe=(2, 2), av=(2, 2), workers=0,
    ...                     size=ClipSize(frames=2, size=16, audio_rate=8000), progress=False)
    ...     sorted(info["splits"])
    ['action', 'av', 'retrieval', 'sound', 'train']
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..writer import ShardWriter, encode_mp4
from .avclass import AVClassConfig, av_sample
from .events import COLOURS, MOTIONS, SHAPE_TIMBRE, SHAPES, Event
from .narration import MAX_WORDS
from .oracle import oracle_levels
from .plan import ClipSize, NoiseConfig, noise_config, plan_split
from .render import render_clip
from .sound import clip_audio, event_sound, music

__all__ = ["SPLIT_DIRS", "generate", "render_planned_clip"]

SPLIT_DIRS = ("train", "retrieval", "action", "sound", "av")
VERSION = 2  # 2: text/audio noise kinds of the shared contract, neighbour modes, oracles


def render_planned_clip(clip: dict, size: ClipSize) -> tuple[np.ndarray, np.ndarray]:
    """Frames ``uint8 [T, H, W, 3]`` and audio ``float32 [S]`` of a clip from :func:`plan_split`.

    The picture always shows the clip's own event; the audio is the event's sound, or music,
    or an unrelated event's sound, as the clip's ``audio_noise`` says; then background noise.

    Example:
        >>> from gradharmony.data.synthetic.plan import plan_split
        >>> s = ClipSize(frames=2, size=16, audio_rate=8000)
        >>> clip = plan_split("train", 2, seed=0, size=s)[0]
        >>> [a.shape for a in render_planned_clip(clip, s)]
        [(2, 16, 16, 3), (2000,)]
    """
    r = clip["render"]
    rng = np.random.default_rng(r["seed"])
    event = Event.from_dict(clip["event"])
    frames = render_clip(event, r["scene"], size.frames, size.fps, size.size,
                         brightness=r["brightness"])
    kind = clip["audio_noise"]
    if kind == "aligned":
        source = event_sound(event, size.audio_rate, size.audio_samples, rng)
    elif kind in ("unrelated_audio", "unrelated"):  # "unrelated": plans of version 1
        source = event_sound(Event.from_dict(clip["audio_event"]), size.audio_rate,
                             size.audio_samples, rng)
    elif kind == "music":
        source = music(rng, size.audio_rate, size.audio_samples)
    else:
        raise ValueError(f"clip {clip.get('__key__')}: unknown audio_noise {kind!r}")
    return frames, clip_audio(source, rng, r["noise_level"])


def _encode_planned(task: tuple[dict, ClipSize]) -> bytes:
    clip, size = task
    frames, audio = render_planned_clip(clip, size)
    return encode_mp4(frames, size.fps, audio, size.audio_rate)


def _encode_av(task: tuple[int, int, AVClassConfig]) -> tuple[bytes, dict]:
    index, seed, config = task
    frames, audio, meta = av_sample(index, seed, config)
    return encode_mp4(frames, config.fps, audio, config.sample_rate), meta


def _imap(func: Callable, tasks: list, workers: int, desc: str, progress: bool) -> Iterator:
    bar = tqdm(total=len(tasks), desc=desc, unit="clip", disable=not progress)
    if workers <= 1 or len(tasks) < 2:
        for t in tasks:
            yield func(t)
            bar.update()
    else:
        # forkserver, not fork: forking a process whose torch/OpenMP threads hold locks can
        # deadlock the children (seen when generating from inside a test session).
        ctx = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
        with ctx.Pool(workers) as pool:
            for out in pool.imap(func, tasks, chunksize=8):
                yield out
                bar.update()
    bar.close()


def _sample(clip: dict, mp4: bytes, **changes) -> dict:
    meta = {k: v for k, v in clip.items() if k not in ("__key__", "txt")}
    meta.update(changes)
    return {"__key__": clip["__key__"], "mp4": mp4, "txt": clip["txt"], "json": meta}


def _write(out: Path, prefix: str, samples: Iterable[dict], per_shard: int) -> list[str]:
    with ShardWriter(out, prefix=prefix, max_count=per_shard) as writer:
        for s in samples:
            writer.write(s)
    return writer.paths


def _rates(clips: list[dict]) -> dict:
    """Obtained rates: overall text and audio noise, and one entry per kind present."""
    n = max(len(clips), 1)
    t = Counter(c["text_noise"] for c in clips)
    a = Counter(c["audio_noise"] for c in clips)
    out = {"text_noise": 1 - t["aligned"] / n, "audio_noise": 1 - a["aligned"] / n}
    out.update({k: v / n for k, v in sorted(t.items()) if k != "aligned"})
    out.update({k: v / n for k, v in sorted(a.items()) if k != "aligned"})
    return out


def _prepare(out_dir: Path, overwrite: bool) -> None:
    existing = [n for n in (*SPLIT_DIRS, "info.json") if (out_dir / n).exists()]
    if existing and not overwrite:
        raise RuntimeError(
            f"{str(out_dir)!r} already holds a synthetic data set ({', '.join(existing)}); "
            "pass overwrite=True (--overwrite) to replace it")
    for n in existing:
        path = out_dir / n
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def generate(
    out_dir: str | os.PathLike,
    seed: int = 0,
    clips: int = 3200,
    noise: NoiseConfig | str = "howto",
    size: ClipSize | None = None,
    *,
    retrieval: int = 500,
    probe: tuple[int, int] = (600, 400),
    av: tuple[int, int] = (400, 200),
    av_config: AVClassConfig | None = None,
    clips_per_shard: int = 250,
    segments: tuple[int, int] = (4, 8),
    max_words: int = MAX_WORDS,
    workers: int = 2,
    progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Generate the synthetic benchmark under ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: destination folder.
        seed: dataset seed; the same seed and settings give the same bytes.
        clips: number of training clips.
        noise: training-set misalignment, a :class:`NoiseConfig` or a preset name.
        size: clip sizes (frames, fps, frame size, audio rate); default ``ClipSize()``.
        retrieval: clips of the retrieval split.
        probe: (train, test) clips of the action/sound classification splits.
        av: (train, test) samples of the audio-visual split.
        av_config: settings of the audio-visual set (default: ``AVClassConfig`` at ``size``).
        clips_per_shard: samples per tar file.
        segments: (min, max) clips per video.
        max_words: narration length limit.
        workers: rendering processes (0 or 1: in this process).
        progress: show progress bars.
        overwrite: replace an existing data set in ``out_dir``.

    Returns:
        The ``info.json`` content.
    """
    size = ClipSize() if size is None else size
    if isinstance(noise, str):
        noise = noise_config(noise)
    _check_counts(clips, retrieval, probe, av, clips_per_shard)
    if av_config is None:
        av_config = AVClassConfig(frames=size.frames, fps=size.fps, size=size.size,
                                  sample_rate=size.audio_rate)
    out = Path(out_dir)
    _prepare(out, overwrite)
    t0 = time.perf_counter()
    job = _Job(out, int(seed), size, segments, max_words, workers, progress, clips_per_shard)
    splits = {"train": _train_split(job, clips, noise),
              "retrieval": _retrieval_split(job, retrieval),
              **_probe_splits(job, probe),
              "av": _av_split(job, av, av_config)}
    info = {
        "generator": "gradharmony.data.synthetic",
        "version": VERSION,
        "seed": int(seed),
        "sizes": {"frames": size.frames, "fps": size.fps, "size": size.size,
                  "sample_rate": size.audio_rate, "seconds": size.clip_seconds,
                  "audio_samples": size.audio_samples, "max_words": max_words,
                  "segments_per_video": list(segments)},
        "noise": {**asdict(noise), "kind_rates": noise.kind_rates()},
        "vocabulary": {"shapes": list(SHAPES), "colours": list(COLOURS),
                       "motions": list(MOTIONS), "timbres": _timbres()},
        "splits": splits,
        "clips_per_shard": clips_per_shard,
        "seconds": round(time.perf_counter() - t0, 2),
        "workers": workers,
    }
    tmp = out / "info.json.tmp"
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "info.json")
    return info


def _check_counts(clips: int, retrieval: int, probe: tuple[int, int], av: tuple[int, int],
                  clips_per_shard: int) -> None:
    for name, value in (("clips", clips), ("retrieval", retrieval), *(
            (f"probe[{i}]", v) for i, v in enumerate(probe)), *(
            (f"av[{i}]", v) for i, v in enumerate(av))):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected a non-negative number of clips, got {value!r}")
    if clips_per_shard < 1:
        raise ValueError(f"clips_per_shard: expected >= 1, got {clips_per_shard}")


def _timbres() -> list[str]:
    return [SHAPE_TIMBRE[s] for s in SHAPES]


@dataclass(frozen=True)
class _Job:
    """Where and how the splits of one :func:`generate` call are planned, rendered, written."""

    out: Path
    seed: int
    size: ClipSize
    segments: tuple[int, int]
    max_words: int
    workers: int
    progress: bool
    clips_per_shard: int

    def plan(self, split: str, n: int, noise: NoiseConfig) -> list[dict]:
        return plan_split(split, n, self.seed, noise, size=self.size, segments=self.segments,
                          max_words=self.max_words)

    def encode(self, plan: list[dict], desc: str) -> list[bytes]:
        return list(_imap(_encode_planned, [(c, self.size) for c in plan], self.workers, desc,
                          self.progress))

    def write(self, folder: str, prefix: str, samples: Iterable[dict]) -> list[str]:
        """Shards of ``samples`` in ``out/folder``; their paths relative to ``out``."""
        paths = _write(self.out / folder, prefix, samples, self.clips_per_shard)
        return [os.path.relpath(p, self.out) for p in paths]


def _train_split(job: _Job, clips: int, noise: NoiseConfig) -> dict:
    train = job.plan("train", clips, noise)
    shards = job.write("train", "train", (_sample(c, m) for c, m in
                                          zip(train, job.encode(train, "train"))))
    return {"clips": len(train), "videos": len({c["video_id"] for c in train}),
            "shards": shards, "rates": _rates(train)}


def _retrieval_split(job: _Job, n: int) -> dict:
    ret = job.plan("retrieval", n, NoiseConfig())
    shards = job.write("retrieval", "retrieval", (_sample(c, m) for c, m in
                                                  zip(ret, job.encode(ret, "retrieval"))))
    return {"clips": len(ret), "videos": len({c["video_id"] for c in ret}),
            "shards": shards, "oracles": oracle_levels(ret) if ret else {}}


def _probe_splits(job: _Job, probe: tuple[int, int]) -> dict[str, dict]:
    """``action`` and ``sound``: the same clean clips labelled by motion and by timbre."""
    timbres = _timbres()
    splits = {"action": {"label": "motion", "class_names": list(MOTIONS)},
              "sound": {"label": "timbre (the object's shape)", "class_names": timbres}}
    for part, n in zip(("train", "test"), probe):
        plan = job.plan(f"probe_{part}", n, NoiseConfig())
        mp4s = job.encode(plan, f"action/sound {part}")
        for name in ("action", "sound"):
            samples = (
                _sample(c, m, split=name, subset=part, label=c["labels"][name],
                        label_name=(MOTIONS[c["labels"][name]] if name == "action"
                                    else timbres[c["labels"][name]]))
                for c, m in zip(plan, mp4s))
            splits[name][part] = {"clips": len(plan), "shards": job.write(name, part, samples)}
    return splits


def _av_split(job: _Job, av: tuple[int, int], av_config: AVClassConfig) -> dict:
    split = {"label": "motion class, carried by audio more often than by video",
             "class_names": av_config.class_names, "seed": job.seed,
             "config": asdict(av_config),
             "in_memory": "gradharmony.data.synthetic.av_classification_arrays("
                          "n_train + n_test, seed, **config): same content, unencoded"}
    start = 0
    for part, n in zip(("train", "test"), av):
        tasks = [(i, job.seed, av_config) for i in range(start, start + n)]
        results = _imap(_encode_av, tasks, job.workers, f"av {part}", job.progress)
        samples = ({"__key__": f"av_{i:06d}", "mp4": m,
                    "json": {**meta, "split": "av", "subset": part, "index": i}}
                   for i, (m, meta) in zip(range(start, start + n), results))
        split[part] = {"clips": n, "first_index": start, "shards": job.write("av", part, samples)}
        start += n
    return split
