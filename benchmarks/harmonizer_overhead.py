"""Harmonizer overhead: time and peak memory per training step, as ratios to plain training.

Plain training is ``sum(losses).backward()``. Every configuration runs the same forward and
losses on the VATT ``tiny`` preset at demo sizes (16 frames of 64x64, 2 s of 16 kHz audio,
k=4 narrations of 16 tokens, batch 64). Timings are interleaved repetitions in one process
(best of the repetitions: load only adds time); memory is the peak resident-set increase
over one step (RSS polled every 2 ms from /proc/self/statm), each configuration in a fresh
process, since torch's CPU allocations are invisible to tracemalloc; "live" repeats it with
glibc returning every freed block over 128 KiB at once, so it counts the bytes actually
alive rather than freed memory glibc keeps in its heap. The brute-force
per-triplet loop (one masked backward per triplet and loss) is timed on a few triplets and
scaled to the batch.

Run: ``python benchmarks/harmonizer_overhead.py [--batch 64] [--reps 10] [--threads 2]``.
On a shared machine a few repetitions are not enough: two settings doing the same work have
differed by 0.2x with 4 repetitions and by 0.05x with 10.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import torch
from tqdm import tqdm

from _steps import bench_parser, load_note, peak_rss_increase_mib  # noqa: E402  (benchmarks/ on sys.path)
from _steps import make_step as harmonized_step
from gradharmony.losses import mil_nce, nce
from gradharmony.models import create_model

CONFIGS = [
    ("plain", None),
    ("baseline", "batch"),
    ("gr", "batch"),
    ("both", "batch"),
    ("gr", "sample"),
    ("both", "sample"),
    ("both", 8),
    ("gradvac", "sample"),
]


def make_batch(b: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    k, length = 4, 16
    text = torch.randint(1, vocab, (b, k, length), generator=g)
    mask = torch.ones(b, k, length, dtype=torch.bool)
    mask[:, :, 12:] = False
    text[~mask] = 0
    return {
        "video": torch.rand(b, 16, 64, 64, 3, generator=g),
        "audio": torch.rand(b, 32000, generator=g) * 2 - 1,
        "text": text,
        "text_mask": mask,
        "candidate_mask": torch.ones(b, k, dtype=torch.bool),
        "has_text": torch.ones(b, dtype=torch.bool),
    }


def losses_of(model, batch) -> dict:
    out = model(batch)
    return {
        "va": nce(out["video_va"], out["audio_va"]),
        "vt": mil_nce(out["video_vt"], out["text_vt"], candidate_mask=batch["candidate_mask"]),
    }


def make_step(model, method, granularity):
    return harmonized_step(model, method, granularity, losses_of)


def brute_force_seconds(model, batch, triplets: int) -> float:
    """Seconds for a per-triplet loop over ``triplets`` triplets (one masked backward each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.perf_counter()
    out = model(batch)
    losses = {
        "va": nce(out["video_va"], out["audio_va"]),
        "vt": mil_nce(out["video_vt"], out["text_vt"], candidate_mask=batch["candidate_mask"]),
    }
    keys = ["video_va", "audio_va", "video_vt", "text_vt"]
    ups = {n: torch.autograd.grad(l, [out[k] for k in keys], retain_graph=True,
                                  allow_unused=True) for n, l in losses.items()}  # fmt: skip
    for i in range(triplets):
        for up in ups.values():
            masked = []
            for key, u in zip(keys, up):
                m = torch.zeros_like(out[key])
                if u is not None:
                    m[i] = u[i]
                masked.append(m)
            torch.autograd.grad([out[k] for k in keys], params, masked, retain_graph=True,
                                allow_unused=True)  # fmt: skip
    return time.perf_counter() - t0


def setup(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model("tiny", vocab_size=1000).train()
    return model, make_batch(args.batch, 1000)


def measure_memory(args) -> None:
    """Child process: print the peak RSS increase (MiB) of one step of one configuration."""
    model, batch = setup(args)
    method, gran = args.memory
    gran = int(gran) if gran.isdigit() else gran
    step = make_step(model, method, None if gran == "None" else gran)
    print(json.dumps({"peak_mib": peak_rss_increase_mib(step, batch)}))


def memory_of(args, method, gran, live: bool = False) -> float:
    """Peak RSS increase (MiB) of one step in a fresh process.

    ``live``: with glibc's mmap threshold fixed at 128 KiB every larger block is returned to
    the system when freed, so RSS follows the bytes actually alive instead of also counting
    freed heap memory the allocator keeps (fragmentation).
    """
    cmd = [sys.executable, __file__, "--batch", str(args.batch), "--threads", str(args.threads),
           "--memory", method, str(gran)]  # fmt: skip
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072") if live else None
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def _ratio(mem: dict, c) -> str:
    if not mem:
        return "-"
    return f"{mem[c] / mem[('plain', None)]:.2f}x ({mem[c]:.0f} MiB)"


def main(argv=None) -> int:
    p = bench_parser(__doc__, batch=64, reps=10, memory_args=2)
    p.add_argument("--brute-triplets", type=int, default=2)
    args = p.parse_args(argv)
    if args.memory:
        measure_memory(args)
        return 0
    model, batch = setup(args)
    steps = {c: make_step(model, *c) for c in CONFIGS}
    times: dict = {c: [] for c in CONFIGS}
    cpu: dict = {c: [] for c in CONFIGS}
    load = os.getloadavg()
    for c in CONFIGS:  # warm-up
        steps[c](batch)
    bar = tqdm(total=args.reps * len(CONFIGS), desc="timing", file=sys.stderr)
    for _ in range(args.reps):
        for c in CONFIGS:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[c](batch)
            times[c].append(time.perf_counter() - t0)
            cpu[c].append(time.process_time() - c0)
            bar.update()
    bar.close()
    note = load_note(load)
    brute = brute_force_seconds(model, batch, args.brute_triplets) / args.brute_triplets
    plain = min(times[("plain", None)])
    plain_cpu = min(cpu[("plain", None)])
    print("| method | granularity | wall time / plain | CPU time / plain |", file=sys.stderr)
    for c in CONFIGS:  # in case the memory runs fail, the timings are already out
        print(f"| {c[0]} | {c[1] or '-'} | {min(times[c]) / plain:.2f}x | "
              f"{min(cpu[c]) / plain_cpu:.2f}x |", file=sys.stderr)  # fmt: skip
    mem, live = {}, {}
    if not args.no_memory:
        for c in tqdm(CONFIGS, desc="memory", file=sys.stderr):
            mem[c] = memory_of(args, c[0], c[1])
            live[c] = memory_of(args, c[0], c[1], live=True)
    print(f"batch {args.batch}, {args.threads} threads, plain step {plain:.3f} s wall, "
          f"{plain_cpu:.3f} s CPU (best of {args.reps}), {note}\n")  # fmt: skip
    print("| method | granularity | wall time / plain | CPU time / plain | peak RSS / plain "
          "| peak live / plain |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for c in CONFIGS:
        t = min(times[c]) / plain
        ct = min(cpu[c]) / plain_cpu
        print(f"| {c[0]} | {c[1] or '-'} | {t:.2f}x | {ct:.2f}x | {_ratio(mem, c)} "
              f"| {_ratio(live, c)} |")  # fmt: skip
    print(f"| brute-force loop | sample | {brute * args.batch / plain:.1f}x "
          f"(from {args.brute_triplets} triplets) | - | - | - |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
