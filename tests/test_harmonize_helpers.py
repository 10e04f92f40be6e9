"""A small shared-backbone video/audio/text model, contrastive losses and the brute-force oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-norm transformer block with single-head attention built from Linear layers."""

    def __init__(self, dim: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        att = (q @ k.transpose(1, 2) / q.shape[-1] ** 0.5).softmax(-1)
        x = x + self.proj(att @ v)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyTriModal(nn.Module):
    """Conv patch tokenizers (video Conv2d, audio Conv1d), token + positional embeddings
    looked up with batched indices, one shared block, per-space heads."""

    def __init__(self, dim=8, vocab=12, depth=1):
        super().__init__()
        self.video_patch = nn.Conv2d(3, dim, kernel_size=2, stride=2)
        self.audio_patch = nn.Conv1d(1, dim, kernel_size=4, stride=4)
        self.token = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(16, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.va_video, self.va_audio = nn.Linear(dim, 6), nn.Linear(dim, 6, bias=False)
        self.vt_video, self.vt_text = nn.Linear(dim, 5), nn.Linear(dim, 5)

    def backbone(self, x):
        n, t, _ = x.shape
        x = x + self.pos(torch.arange(t).expand(n, t))
        for block in self.blocks:
            x = block(x)
        return self.norm(x).mean(1)

    def forward(self, video, audio, text):
        b, k, length = text.shape
        v = self.backbone(self.video_patch(video).flatten(2).transpose(1, 2))
        a = self.backbone(self.audio_patch(audio).transpose(1, 2))
        t = self.backbone(self.token(text.reshape(b * k, length)))
        return {
            "video_va": F.normalize(self.va_video(v), dim=-1),
            "audio_va": F.normalize(self.va_audio(a), dim=-1),
            "video_vt": F.normalize(self.vt_video(v), dim=-1),
            "text_vt": F.normalize(self.vt_text(t), dim=-1).view(b, k, -1),
        }


def make_batch(b=6, k=3, length=4, vocab=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, vocab, (b, k, length), generator=g)
    text[:, :, -1] = 0  # padding
    return {
        "video": torch.randn(b, 3, 4, 4, generator=g),
        "audio": torch.randn(b, 1, 16, generator=g),
        "text": text,
    }


def nce(z_v, z_a, tau=0.1):
    """Symmetric InfoNCE with in-batch negatives."""
    s = z_v @ z_a.T / tau
    target = torch.arange(len(s))
    return (F.cross_entropy(s, target) + F.cross_entropy(s.T, target)) / 2


def mil_nce(z_v, z_t, tau=0.1):
    """MIL-NCE: k positive narrations per video, negatives from rows and columns."""
    b, k, d = z_t.shape
    s = torch.einsum("id,jkd->ijk", z_v, z_t) / tau
    pos = s[torch.arange(b), torch.arange(b)].logsumexp(-1)
    den = torch.cat([s.reshape(b, b * k), s.permute(1, 0, 2).reshape(b, b * k)], 1)
    return (den.logsumexp(-1) - pos).mean()


def losses_of(out):
    return {
        "va": nce(out["video_va"], out["audio_va"]),
        "vt": mil_nce(out["video_vt"], out["text_vt"]),
    }


def oracle_group_grads(model, batch, groups):
    """Brute force: per group and loss, backprop the loss's output gradient masked to the
    group's triplets (every model output keeps the triplet on dim 0). Returns [G, L, P]."""
    params = list(model.parameters())
    out = model(**batch)
    losses = losses_of(out)
    keys = list(out)
    b = out[keys[0]].shape[0]
    size = b // groups
    rows = []
    for g in range(groups):
        per_loss = []
        for loss in losses.values():
            up = torch.autograd.grad(loss, [out[k] for k in keys], retain_graph=True,
                                     allow_unused=True)  # fmt: skip
            masked = []
            for u, key in zip(up, keys):
                u = torch.zeros_like(out[key]) if u is None else u.clone()
                keep = torch.zeros(b, dtype=torch.bool)
                keep[g * size : (g + 1) * size] = True
                u[~keep] = 0
                masked.append(u)
            grads = torch.autograd.grad([out[k] for k in keys], params, masked,
                                        retain_graph=True, allow_unused=True)  # fmt: skip
            per_loss.append(
                torch.cat([(torch.zeros_like(p) if gr is None else gr).reshape(-1)
                           for p, gr in zip(params, grads)])  # fmt: skip
            )
        rows.append(torch.stack(per_loss))
    return torch.stack(rows)


def flat_grad(model):
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return torch.cat([g.reshape(-1) for g in grads])


# "gradvac-2": the second step, after the EMA target moved (it must move the same on all ranks)
DDP_CASES = [("both", "sample"), ("gr", "batch"), ("cl", 2), ("gradvac-2", "sample")]


def ddp_losses(out):
    """Global-batch losses from local embeddings gathered across ranks with gradient."""
    from gradharmony.losses import gather_with_grad

    return losses_of({k: gather_with_grad(v) for k, v in out.items()})


def run_cases(model, batch, cases=DDP_CASES):
    """Flat harmonized gradients and cosines of each (method, granularity) on ``batch``."""
    from gradharmony.harmonize import Harmonizer

    results = []
    for method, granularity in cases:
        name, _, steps = method.partition("-")
        harm = Harmonizer(model, method=name, granularity=granularity, gamma=-0.2, beta=0.5)
        for _ in range(int(steps or 1)):
            model.zero_grad(set_to_none=True)
            stats = harm.backward(ddp_losses(model(**batch)))
        harm.remove()
        results.append((flat_grad(model).clone(), stats.cos.clone()))
    return results


def ddp_worker(rank, world, port, path):
    import os

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = TinyTriModal()
        batch = make_batch(b=4)
        per = 4 // world
        local = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items()}
        results = run_cases(model, local)
        torch.save(results, f"{path}.{rank}")
    finally:
        dist.destroy_process_group()


pytestmark = pytest.mark.usefixtures("one_thread")
