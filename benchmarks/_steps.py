"""The step the harmonizer benchmarks time: a plain backward of the summed losses, or one
Harmonizer step (hooked for that step only: every hooked Harmonizer records every forward)."""

from __future__ import annotations

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
