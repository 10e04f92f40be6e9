"""Harmonizer overhead on an open_clip CLIP: ``both`` at sample granularity against a plain step.

The model is open_clip's ViT-B/32 CLIP shape narrowed to fit a CPU (vision: 224x224 images,
32x32 patches, 4 layers of width 192; text: 77 tokens, 4 layers of width 128; embeddings
of 128), random weights. The step trains the CLIP contrastive loss (learned logit_scale)
plus a SLIP-style image self-supervised loss between two views of the images, batch 32.
The "converted" rows run the same model after ``convert_multihead_attention`` (attention
projections as ``nn.Linear``; same outputs), against the unconverted plain step.
Timings are interleaved repetitions in one process (best of them); memory is the peak
resident-set increase of one step in a fresh process (RSS polled every 2 ms), also with
glibc returning every freed block over 128 KiB at once ("live": the bytes actually alive).

Run: ``python benchmarks/harmonizer_models.py [--batch 32] [--reps 5] [--threads 2]``
(needs open_clip_torch; torchvision may be missing or broken, see docs/harmonize.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _steps import load_note, peak_rss_increase_mib  # noqa: E402  (benchmarks/ on sys.path)
from _steps import make_step as harmonized_step
from gradharmony.harmonize import convert_multihead_attention

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from library_models import import_library  # noqa: E402

#: (method, granularity, attention converted to nn.Linear projections)
CONFIGS = [("plain", None, False), ("both", "sample", False), ("both", "batch", False),
           ("plain", None, True), ("both", "sample", True), ("both", "batch", True)]


def setup(args, converted: bool = False):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    open_clip = import_library("open_clip")
    model = open_clip.CLIP(
        embed_dim=128,
        vision_cfg=dict(layers=4, width=192, head_width=64, patch_size=32, image_size=224),
        text_cfg=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=4),
    ).train()
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
    method, gran, converted = args.memory
    model, batch = setup(args, converted == "True")
    step = make_step(model, method, None if gran == "None" else gran)
    print(json.dumps({"peak_mib": peak_rss_increase_mib(step, batch)}))


def memory_of(args, method, gran, converted, live: bool = False) -> float:
    cmd = [sys.executable, __file__, "--batch", str(args.batch), "--threads", str(args.threads),
           "--memory", method, str(gran), str(converted)]  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if live else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def _ratio(mem: dict, c) -> str:
    return f"{mem[c] / mem[CONFIGS[0]]:.2f}x ({mem[c]:.0f} MiB)" if mem else "-"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory:
        measure_memory(args)
        return 0
    models = {}
    for converted in (False, True):
        models[converted], batch = setup(args, converted)
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
    plain = min(times[CONFIGS[0]])
    note = load_note(load)
    for c in CONFIGS:
        print(f"{c}: {min(times[c]) / plain:.2f}x time (median "
              f"{sorted(times[c])[len(times[c]) // 2] / plain:.2f}x)", file=sys.stderr)
    mem, live = {}, {}
    if not args.no_memory:
        for c in CONFIGS:
            mem[c], live[c] = memory_of(args, *c), memory_of(args, *c, live=True)
    print(f"open_clip CLIP (ViT-B/32 shape, narrowed), batch {args.batch}, {args.threads} "
          f"threads, plain step {plain:.3f} s (best of {args.reps}), {note}\n")  # fmt: skip
    print("| attention | method | granularity | time / plain | peak RSS / plain "
          "| peak live / plain |\n|---|---|---|---|---|---|")  # fmt: skip
    for c in CONFIGS:
        kind = "converted" if c[2] else "nn.MultiheadAttention"
        print(f"| {kind} | {c[0]} | {c[1] or '-'} | {min(times[c]) / plain:.2f}x "
              f"| {_ratio(mem, c)} | {_ratio(live, c)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
