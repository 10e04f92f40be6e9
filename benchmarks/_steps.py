"""The step the harmonizer benchmarks time: a plain backward of the summed losses, or one
Harmonizer step (hooked for that step only: every hooked Harmonizer records every forward)."""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

from gradharmony.harmonize import Harmonizer


def make_step(model, method, granularity, losses_of):
    """A function of a batch that computes the gradients of ``losses_of(model, batch)``."""
    if method == "plain":

        def step(batch):
            model.zero_grad(set_to_none=True)
            sum(losses_of(model, batch).values()).backward()

        return step

    def step(batch):
        harm = Harmonizer(model, method=method, granularity=granularity, gamma=-0.3)
        try:
            model.zero_grad(set_to_none=True)
            harm.backward(losses_of(model, batch))
        finally:
            harm.remove()

    return step


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_increase_mib(step, batch) -> float:
    """Peak resident memory (MiB) above the level before ``step(batch)``, polled every 2 ms."""
    before = _rss_mib()
    peak, done = [before], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    step(batch)
    done.set()
    thread.join()
    return max(peak[0], _rss_mib()) - before


def load_note(start: tuple[float, float, float]) -> str:
    """The machine's 1-minute load average at the start of the timings and now: the ratios
    are measured side by side, but other processes running change them."""
    return f"load average {start[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"


def bench_parser(doc: str, batch: int, reps: int, memory_args: int) -> argparse.ArgumentParser:
    """The options both harmonizer benchmarks share: ``--batch``, ``--reps``, ``--threads``,
    ``--no-memory`` and the hidden ``--memory`` of the child process that measures one step."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--reps", type=int, default=reps)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--memory", nargs=memory_args, help=argparse.SUPPRESS)
    return p
