"""Harmonizer overhead on an open_clip CLIP: ``both`` at sample granularity against a plain step.

The model is open_clip's ViT-B/32 CLIP shape made small enough for a CPU in one of two ways
(``--shapes``; random weights, 224x224 images in 32x32 patches, 77 text tokens):
``narrow`` keeps 4 layers per tower and narrows them (vision width 192, text width 128,
embeddings of 128); ``full-width`` keeps ViT-B/32's layer shape (vision width 768 in 12
heads, text width 512 in 8 heads, embeddings of 512) and keeps 2 layers per tower. The
Gramian's cost per layer grows with tokens^2 x width while the layer's grows with tokens x
width^2, so narrowing raises the harmonizer's share and cutting depth does not change it:
``full-width`` is the ratio a 12-layer ViT-B/32 CLIP sees, ``narrow`` a pessimistic one.
The step trains the CLIP contrastive loss (learned logit_scale)
plus a SLIP-style image self-supervised loss between two views of the images, batch 32.
The "converted" rows run the same model after ``convert_multihead_attention`` (attention
projections as ``nn.Linear``; same outputs), against the unconverted plain step.
Timings are interleaved repetitions in one process (best of them); memory is the peak
resident-set increase of one step in a fresh process (RSS polled every 2 ms), also with
glibc returning every freed block over 128 KiB at once ("live": the bytes actually alive).

Run: ``python benchmarks/harmonizer_models.py [--batch 32] [--reps 5] [--threads 2]
[--shapes narrow,full-width]``
(needs open_clip_torch; torchvision may be missing or broken, see docs/harmonize.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _steps import bench_parser, load_note, peak_rss_increase_mib  # noqa: E402  (benchmarks/ on sys.path)
from _steps import make_step as harmonized_step
from gradharmony.harmonize import convert_multihead_attention

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from library_models import import_library  # noqa: E402

#: (method, granularity, attention converted to nn.Linear projections)
CONFIGS = [("plain", None, False), ("both", "sample", False), ("both", "batch", False),
           ("plain", None, True), ("both", "sample", True), ("both", "batch", True)]
PLAIN, CONVERTED_PLAIN = ("plain", None, False), ("plain", None, True)


#: open_clip CLIP configurations (see the module docstring)
SHAPES = {
    "narrow": dict(
        embed_dim=128,
        vision_cfg=dict(layers=4, width=192, head_width=64, patch_size=32, image_size=224),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=4),
    ),
    "full-width": dict(
        embed_dim=512,
        vision_cfg=dict(layers=2, width=768, head_width=64, patch_size=32, image_size=224),
        text_cfg=dict(context_length=77, vocab_size=49408, width=512, heads=8, layers=2),
    ),
}


def setup(args, converted: bool = False, shape: str = "narrow"):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    open_clip = import_library("open_clip")
    model = open_clip.CLIP(**SHAPES[shape]).train()
    if converted:
        convert_multihead_attention(model)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224, generator=g)
    text = torch.randint(1, 49408, (args.batch, 77), generator=g)
    return model, (images, text)


def contrastive(za, zb, scale):
    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = scale * za @ zb.T
    target = torch.arange(len(za))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def losses_of(model, batch) -> dict:
    images, text = batch
    img, txt, scale = model(images, text)
    img2 = model.encode_image(images.flip(-1))
    return {"clip": contrastive(img, txt, scale), "ssl": contrastive(img, img2, 10.0)}


def make_step(model, method, granularity):
    return harmonized_step(model, method, granularity, losses_of)


def measure_memory(args) -> None:
    """Child process: print the peak RSS increase (MiB) of one step of one configuration."""
    method, gran, converted, shape = args.memory
    model, batch = setup(args, converted == "True", shape)
    step = make_step(model, method, None if gran == "None" else gran)
    print(json.dumps({"peak_mib": peak_rss_increase_mib(step, batch)}))


def memory_of(args, shape, method, gran, converted, live: bool = False) -> float:
    cmd = [sys.executable, __file__, "--batch", str(args.batch), "--threads", str(args.threads),
           "--memory", method, str(gran), str(converted), shape]  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if live else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def _ratio(mem: dict, c) -> str:
    return f"{mem[c] / mem[PLAIN]:.2f}x ({mem[c]:.0f} MiB)" if mem else "-"


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def measure_shape(args, shape: str) -> None:
    """Time the configurations interleaved (and their memory, each in a fresh process) on one
    model shape and print the table."""
    models = {}
    for converted in (False, True):
        models[converted], batch = setup(args, converted, shape)
    steps = {c: make_step(models[c[2]], *c[:2]) for c in CONFIGS}
    times: dict = {c: [] for c in CONFIGS}
    load = os.getloadavg()
    for c in CONFIGS:  # warm-up
        steps[c](batch)
    for _ in range(args.reps):
        for c in CONFIGS:
            t0 = time.perf_counter()
            steps[c](batch)
            times[c].append(time.perf_counter() - t0)
    plain = min(times[PLAIN])
    note = load_note(load)
    mem, live = {}, {}
    if not args.no_memory:
        for c in CONFIGS:
            mem[c], live[c] = memory_of(args, shape, *c), memory_of(args, shape, *c, live=True)
    print(f"\nopen_clip CLIP, ViT-B/32 shape {shape}, batch {args.batch}, {args.threads} "
          f"threads, plain step {plain:.3f} s (best of {args.reps}), {note}\n")  # fmt: skip
    print("| attention | method | granularity | time / plain (median) | time / converted plain "
          "| peak RSS / plain | peak live / plain |\n|---|---|---|---|---|---|---|")  # fmt: skip
    own = min(times[CONVERTED_PLAIN])
    for c in CONFIGS:
        kind = "converted" if c[2] else "nn.MultiheadAttention"
        median = _median(times[c]) / _median(times[PLAIN])
        versus = f"{min(times[c]) / own:.2f}x" if c[2] else "-"
        print(f"| {kind} | {c[0]} | {c[1] or '-'} | {min(times[c]) / plain:.2f}x ({median:.2f}x) "
              f"| {versus} | {_ratio(mem, c)} | {_ratio(live, c)} |")  # fmt: skip
    sys.stdout.flush()


def main(argv=None) -> int:
    p = bench_parser(__doc__, batch=32, reps=5, memory_args=4)
    p.add_argument("--shapes", default="narrow,full-width",
                   help=f"comma-separated, from {sorted(SHAPES)}")  # fmt: skip
    args = p.parse_args(argv)
    if args.memory:
        measure_memory(args)
        return 0
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; expected some of {sorted(SHAPES)}")
    for shape in shapes:
        measure_shape(args, shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
