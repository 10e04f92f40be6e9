"""Pure-torch replicas of the patterns of open_clip, timm and transformers models, so that a
clean checkout (no model libraries) covers them: CLIP ViT (class token, position table,
nn.MultiheadAttention, projection, logit_scale), ConvNeXt (depthwise conv, channels-first
LayerNorm, layer scale), Llama (RMSNorm, tied embeddings), BERT (position ids [1, T], a
pooler computed from the last hidden state)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.harmonize_oracle import check_model, oracle

pytestmark = pytest.mark.usefixtures("one_thread")
B = 8
GRANULARITIES = ("sample", 4, "batch")


def contrastive(za, zb, scale):
    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = scale * za @ zb.T
    target = torch.arange(len(za))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, mask=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class MiniCLIP(nn.Module):
    """open_clip's CLIP: a ViT with class token, position table and projection as bare
    parameters; a causal text transformer; a learned logit_scale."""

    def __init__(self, dim=16, embed=8, vocab=32, ctx=6):
        super().__init__()
        self.conv1 = nn.Conv2d(3, dim, 4, stride=4, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(dim) * 0.5)
        self.positional_embedding = nn.Parameter(torch.randn(17, dim) * 0.5)
        self.visual = Block(dim)
        self.proj = nn.Parameter(torch.randn(dim, embed) * 0.3)
        self.token_embedding = nn.Embedding(vocab, dim)
        self.text_pos = nn.Parameter(torch.randn(ctx, dim) * 0.5)
        self.text = Block(dim)
        self.ln_final = nn.LayerNorm(dim)
        self.text_projection = nn.Parameter(torch.randn(dim, embed) * 0.3)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.register_buffer("causal", torch.triu(torch.ones(ctx, ctx, dtype=torch.bool), 1))

    def encode_image(self, x):
        x = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding
        return self.visual(x)[:, 0] @ self.proj

    def encode_text(self, ids):
        x = self.token_embedding(ids) + self.text_pos
        x = self.ln_final(self.text(x, self.causal))
        return x[torch.arange(x.shape[0]), ids.argmax(-1)] @ self.text_projection

    def forward(self, image, text):
        return self.encode_image(image), self.encode_text(text), self.logit_scale.exp()


def test_clip_replica_with_a_second_image_loss():
    model = MiniCLIP()
    images = torch.randn(B, 3, 16, 16)
    text = torch.randint(0, 32, (B, 6))

    def run():
        img, txt, scale = model(images, text)
        return img, txt, scale, model.encode_image(images.flip(-1))

    def losses(out):
        img, txt, scale, img2 = out
        return {"va": contrastive(img, txt, scale), "vt": contrastive(img, img2, 10.0)}

    check_model(model, run, losses, batch=B, granularities=GRANULARITIES)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                            self.bias, self.eps).permute(0, 3, 1, 2)  # fmt: skip


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        h = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
        h = self.fc2(F.gelu(self.fc1(h))).permute(0, 3, 1, 2)
        return x + h.mul(self.gamma.reshape(1, -1, 1, 1))


class MiniConvNeXt(nn.Module):
    def __init__(self, dim=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 2, stride=2), LayerNorm2d(dim))
        self.block = ConvNeXtBlock(dim)
        self.head = nn.Linear(dim, 6)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def _feature_losses(y):
    keys = torch.randn(y.shape[0], y.shape[-1], generator=torch.Generator().manual_seed(3))
    return {"va": contrastive(y, keys, 5.0), "vt": (y[:, :3] - 0.5).pow(2).mean() * 10}


def test_convnext_replica():
    model = MiniConvNeXt()
    x = torch.randn(B, 3, 8, 8)
    check_model(model, lambda: model(x), _feature_losses, batch=B, granularities=GRANULARITIES)


class MiniLlama(nn.Module):
    def __init__(self, vocab=32, dim=8):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.norm1, self.norm2 = nn.RMSNorm(dim), nn.RMSNorm(dim)
        self.gate, self.up = nn.Linear(dim, 16, bias=False), nn.Linear(dim, 16, bias=False)
        self.down = nn.Linear(16, dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, ids):
        h = self.embed_tokens(ids)
        x = self.norm1(h)
        h = h + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.lm_head(self.norm2(h))


def test_llama_replica_with_tied_embeddings():
    model = MiniLlama()
    ids = torch.randint(0, 32, (B, 5))

    def losses(logits):
        return {"va": F.cross_entropy(logits[:, :-1].reshape(-1, 32), ids[:, 1:].reshape(-1)),
                "vt": logits[:, -1].logsumexp(-1).mean()}  # fmt: skip

    check_model(model, lambda: model(ids), losses, batch=B, granularities=GRANULARITIES)


class MiniBert(nn.Module):
    """Position ids [1, T] broadcast over the batch; the pooler output is computed from the
    last hidden state, and both are returned."""

    def __init__(self, vocab=32, dim=8, tokens=6):
        super().__init__()
        self.word = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(16, dim)
        self.register_buffer("position_ids", torch.arange(16).unsqueeze(0))
        self.ln = nn.LayerNorm(dim)
        self.block = Block(dim)
        self.pooler = nn.Linear(dim, dim)

    def forward(self, ids):
        x = self.word(ids)
        x += self.position(self.position_ids[:, : ids.shape[1]])
        hidden = self.block(self.ln(x))
        return hidden, torch.tanh(self.pooler(hidden[:, 0]))


def _bert_losses(out):
    hidden, pooled = out
    return {"va": _feature_losses(pooled)["va"], "vt": hidden.mean(1).pow(2).sum()}


def test_bert_replica_with_default_position_ids():
    model = MiniBert()
    ids = torch.randint(0, 32, (B, 6))
    check_model(model, lambda: model(ids), _bert_losses, batch=B, granularities=GRANULARITIES)


def test_oracle_takes_partial_derivatives_at_dependent_outputs():
    """Masking the *total* derivative at both outputs counts the pooler path twice (the
    loss on the pooler output reaches the last hidden state through it): the oracle must not."""
    model = MiniBert()
    ids = torch.randint(0, 32, (B, 6))
    per, _, _ = oracle(model, lambda: model(ids), _bert_losses, B)
    hidden, pooled = model(ids)
    loss = _bert_losses((hidden, pooled))["va"]
    params = list(model.parameters())
    total = torch.autograd.grad(loss, [hidden, pooled], retain_graph=True)
    first = [t.clone() for t in total]
    for t in first:
        t[1:] = 0
    naive = torch.autograd.grad([hidden, pooled], params, first, allow_unused=True)
    naive = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                       for p, g in zip(params, naive)]).double()  # fmt: skip
    assert not torch.allclose(naive, per[0, 0], rtol=1e-3)
    assert torch.allclose(per[:, 0].sum(0), _flat_plain(model, ids), rtol=1e-4, atol=1e-7)


def _flat_plain(model, ids):
    params = list(model.parameters())
    loss = _bert_losses(model(ids))["va"]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for p, g in zip(params, grads)]).double()  # fmt: skip
