"""Pre-training throughput (clips/s) per method and granularity, relative to ``baseline``.

All settings are measured in ONE process, interleaved round-robin (one step of each per
round), so machine load affects them alike; the table reports the median step time and the
ratio to the ``baseline`` row. Batches are random tensors of the preset's shapes
(``data.kind=random``: model and harmonizer cost only, no decoding).

CPU section: the ``configs/demo.yaml`` preset. GPU section (only where CUDA is available,
otherwise it says so): the ``base`` VATT preset in bf16.

    .venv/bin/python benchmarks/pretrain_throughput.py [--rounds 5] [--cpu-only] [key=value ...]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from gradharmony.evaluate.run import build_model
from gradharmony.train.build import build_batches
from gradharmony.train.config import load_config
from gradharmony.train.distributed import DistContext
from gradharmony.train.state import make_harmonizer
from gradharmony.train.step import cma_losses

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [("plain", "batch"), ("baseline", "batch"), ("rw-va", "batch"), ("gradvac", "batch"),
            ("gr", "batch"), ("both", "batch"), ("both", "16"), ("gr", "sample"),
            ("cl", "sample"), ("both", "sample")]


class _Runner:
    """One training setting: model, harmonizer (or a plain backward), Adam, batches."""

    def __init__(self, cfg, device: torch.device):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg).to(device).train()
        self.plain = cfg.method == "plain"
        if not self.plain:
            self.harm = make_harmonizer(cfg, self.model)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.optim.lr)
        ctx = DistContext(0, 1, 0, device)
        self.batch = {k: v.to(device) if torch.is_tensor(v) else v
                      for k, v in build_batches(cfg, ctx).batch(0).items()}
        self.step_no = 0

    def step(self) -> float:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if self.cfg.precision == "bf16"
               else torch.autocast("cpu", enabled=False))
        with ctx:
            out = self.model(self.batch)
        losses = cma_losses(out, self.batch, self.cfg.model.temperature)
        if self.plain:
            (losses["va"] + losses["vt"]).backward()
        else:
            stats = self.harm.backward(losses, step=self.step_no)
        if self.plain or not stats.all_dropped:
            self.opt.step()
        sync()
        self.step_no += 1
        return time.perf_counter() - t0


def measure(base_overrides: list[str], device: torch.device, rounds: int,
            settings=SETTINGS) -> list[tuple[str, str, float, float]]:
    runners = {}
    for method, gran in settings:
        cfg = load_config(overrides=[*base_overrides, "data.kind=random",
                                     f"method={'baseline' if method == 'plain' else method}",
                                     f"granularity={gran}"])
        cfg.method = method
        runners[(method, gran)] = _Runner(cfg, device)
    times: dict = {k: [] for k in runners}
    for r in runners.values():  # warm-up
        r.step()
    for i in range(rounds):
        for k, r in runners.items():
            times[k].append(r.step())
        print(f"  round {i + 1}/{rounds} done", flush=True)
    batch = runners[settings[0]].cfg.batch_size
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med[("baseline", "batch")]
    return [(m, g, batch / med[(m, g)], med[(m, g)] / ref) for m, g in settings]


def table(rows, title: str) -> str:
    lines = [f"### {title}", "", "| method | granularity | clips/s | step time / baseline |",
             "|---|---|---:|---:|"]
    lines += [f"| {m} | {g} | {c:.1f} | {r:.2f}x |" for m, g, c, r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cpu-only", action="store_true")
    p.add_argument("--settings", help="comma-separated method:granularity (default: all); "
                   "baseline:batch is always included")
    p.add_argument("overrides", nargs="*", help="extra key=value for the CPU section")
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    demo = load_config(ROOT / "configs" / "demo.yaml", check=False)
    cpu_over = [f"batch_size={demo.batch_size}", f"model.preset={demo.model.preset}",
                *[f"model.kwargs.{k}={v}" for k, v in demo.model.kwargs.items()],
                *[f"data.{k}={demo.data[k]}" for k in ("frames", "crop", "size", "audio_rate",
                                                        "clip_seconds", "text_len",
                                                        "candidates")],
                "data.vocab_size=200", "device=cpu", *args.overrides]
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; demo preset {' '.join(cpu_over)}", flush=True)
    settings = SETTINGS
    if args.settings:
        chosen = [tuple(s.split(":")) for s in args.settings.split(",")]
        settings = [("baseline", "batch")] + [s for s in chosen if s != ("baseline", "batch")]
    out = [table(measure(cpu_over, torch.device("cpu"), args.rounds, settings),
                 f"CPU, demo preset (batch {demo.batch_size}), median of {args.rounds} rounds")]
    if args.cpu_only:
        pass
    elif torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        gpu_over = ["model.preset=base", "precision=bf16", "batch_size=32", "device=cuda",
                    "data.vocab_size=8192", "data.frames=32", "data.crop=224", "data.size=224",
                    "data.audio_rate=48000", "data.clip_seconds=3.2", "data.candidates=4"]
        print(f"GPU: {name}", flush=True)
        out.append(table(measure(gpu_over, torch.device("cuda"), args.rounds, settings),
                         f"GPU {name}, base preset, bf16, batch 32 per GPU"))
    else:
        out.append("### GPU\n\nCUDA is not available on this machine: GPU section skipped.")
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
