"""A tiny harmonizer-compatible stand-in for VATT, importable by the trainer subprocesses.

``model.preset=tests.test_train_standin:standin`` (with the repository root on PYTHONPATH)
builds it. It follows the model output contract of docs/architecture.md with one shared layer
used by the video, audio and text passes, LayerNorm and an Embedding, and no randomness in
forward.
"""

import time

import torch
import torch.nn.functional as F
from torch import nn


class StandIn(nn.Module):
    def __init__(self, frames=2, size=4, samples=32, vocab=20, dim=8, delay=0.0):
        super().__init__()
        self.delay = delay  # seconds of sleep per forward: slows a run down without CPU
        self.video = nn.Linear(frames * size * size * 3, dim)
        self.audio = nn.Linear(samples, dim)
        self.embed = nn.Embedding(vocab, dim)
        self.shared = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.v_va, self.a_va = nn.Linear(dim, 6), nn.Linear(dim, 6)
        self.v_vt, self.t_vt = nn.Linear(6, 4), nn.Linear(dim, 4)

    def trunk(self, x):
        return self.norm(torch.tanh(self.shared(x)))

    def forward(self, batch):
        if self.delay:
            time.sleep(self.delay)
        hv = self.trunk(self.video(batch["video"].flatten(1)))
        ha = self.trunk(self.audio(batch["audio"]))
        m = batch["text_mask"].unsqueeze(-1).float()
        ht = self.trunk((self.embed(batch["text"]) * m).sum(2) / m.sum(2).clamp_min(1))
        zv = self.v_va(hv)
        return {"video_va": F.normalize(zv, dim=-1), "audio_va": F.normalize(self.a_va(ha), dim=-1),
                "video_vt": F.normalize(self.v_vt(zv), dim=-1),
                "text_vt": F.normalize(self.t_vt(ht), dim=-1),
                "video_feat": hv, "audio_feat": ha, "text_feat": ht}


def standin(modality_agnostic=True, **kwargs):
    return StandIn(**kwargs)


STANDIN_OVERRIDES = [
    "data.kind=random", "data.frames=2", "data.size=4", "data.crop=4", "data.audio_rate=16",
    "data.clip_seconds=2", "data.text_len=3", "data.candidates=2", "data.vocab_size=20",
    "model.preset=tests.test_train_standin:standin", "model.kwargs.frames=2", "model.kwargs.size=4",
    "model.kwargs.samples=32", "model.kwargs.vocab=20", "optim.lr=0.01", "optim.min_lr=0.001",
    "optim.warmup_steps=2", "batch_size=8", "log_every=2", "ckpt_every=3",
]


def test_standin_follows_the_output_contract():
    from gradharmony.train.batches import RandomTriplets

    batch = RandomTriplets(4, 2, 4, 32, 3, 2, 20).batch(0)
    out = StandIn()(batch)
    assert out["video_va"].shape == (4, 6) and out["text_vt"].shape == (4, 2, 4)
    assert torch.allclose(out["text_vt"].norm(dim=-1), torch.ones(4, 2))
