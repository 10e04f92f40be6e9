"""``low_memory=True``: Linear/Conv output gradients folded into the Gramian as each call
completes and dropped, the update taken from a second backward. Against the brute-force oracle
on the library models and on layers called on passes different losses reach; checked to be
the path taken (nothing kept, the graph kept for the second pass only when needed)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradharmony.harmonize import Harmonizer, _harmonizer, _layers
from tests.harmonize_oracle import check_model
from tests.library_models import MODELS, B
from tests.test_harmonize_perf_paths import Uneven, _perturbed
from tests.test_harmonize_rules import TiedLM, _check

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", list(MODELS))
def test_library_model_matches_the_oracle_with_low_memory(name):
    torch.manual_seed(0)
    model, run, losses = MODELS[name]()
    check_model(model, run, losses, batch=B, granularities=("sample", 4),
                methods=("gr", "both"), low_memory=True)  # fmt: skip


class ConvPasses(nn.Module):
    """A padded, biased convolution called on two passes; the second reaches only one loss."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):  # [B, 2, 5, 5]
        a = self.head(self.conv(x).mean((2, 3)))
        b = self.head(self.conv(x.flip(-1)).tanh().mean((2, 3)))
        return a, b


def _pair_losses(out):
    a, b = out
    return {"va": (a - 1).pow(2).mean() + (a @ a.T).logsumexp(1).mean(),
            "vt": (a * b).sum(1).sin().mean() - 0.3 * (b @ b.T).diagonal().mean()}  # fmt: skip


@pytest.mark.parametrize("make", [Uneven, ConvPasses])
def test_calls_reached_by_different_losses_match_the_oracle(make):
    model = _perturbed(make())
    x = torch.randn(4, 3, 4) if make is Uneven else torch.randn(4, 2, 5, 5)
    check_model(model, lambda: model(x), _pair_losses, batch=4, granularities=("sample", 2),
                low_memory=True)  # fmt: skip


class FrozenWeight(nn.Module):
    """A Linear whose weight is frozen (its bias trains) before a tied embedding/head."""

    def __init__(self):
        super().__init__()
        self.tied = TiedLM()
        self.fc = nn.Linear(7, 4)
        self.fc.weight.requires_grad_(False)

    def forward(self, ids):
        return self.fc(self.tied(ids))


def test_tied_and_frozen_weights_keep_their_output_gradients():
    """A tied weight (summed with its other use) and a Linear with a frozen weight do not
    stream; the rest does, and the result is still exact."""
    model = FrozenWeight()
    streams = {}
    original = _layers.LinearWork.finish

    def spy(self, index):
        streams[self.module] = self.streams()
        return original(self, index)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_layers.LinearWork, "finish", spy)
        _check(model, torch.randint(0, 7, (4, 3)), granularities=("sample", 2),
               low_memory=True)  # fmt: skip
    assert streams == {model.tied.fc: True, model.tied.lm_head: False, model.fc: False}


def test_low_memory_streams_drops_output_gradients_and_keeps_the_graph_only_then(monkeypatch):
    model = _perturbed(Uneven())
    x = torch.randn(4, 3, 4)
    seen = {}
    original = _harmonizer.Harmonizer._grouped_update

    def spy(self, names, works, *args):
        linear = [w for w in works if isinstance(w, _layers.LinearWork)]
        seen["streams"] = [w.streams() for w in linear]
        seen["kept"] = sum(d is not None for w in linear for c in w.calls for d in c.deltas)
        return original(self, names, works, *args)

    monkeypatch.setattr(_harmonizer.Harmonizer, "_grouped_update", spy)
    retained = []
    init = _harmonizer.OutputGradients.__init__

    def record(self, losses, edges, retain=False):
        retained.append(retain)
        init(self, losses, edges, retain)

    monkeypatch.setattr(_harmonizer.OutputGradients, "__init__", record)
    for low in (True, False):
        retained.clear()
        harm = Harmonizer(model, method="both", granularity="sample", low_memory=low,
                          gamma=-0.3)  # fmt: skip
        harm.backward(_pair_losses(model(x)))
        harm.remove()
        assert all(seen["streams"]) == low and any(seen["streams"]) == low
        assert (seen["kept"] == 0) == low
        assert retained == ([True, False] if low else [False])


def test_low_memory_with_check_is_refused():
    with pytest.raises(ValueError, match="low_memory"):
        Harmonizer(nn.Linear(2, 2), gamma=-0.3, check=True, low_memory=True)
