"""The demo preset must train a model whose evaluation embeddings are the ones it trained with.

With BatchNorm heads, Adam and batch 32, the video head's input drifts along a direction that
BatchNorm removes in training (the batch mean): the pooled video feature grew to a norm of ~120
with an across-clip spread of ~0.05, eval-mode BatchNorm (running statistics ~4 spreads off)
mapped every clip to nearly the same embedding, and retrieval stayed at chance. DropToken
(train only) on 32 video tokens also hid the object's patches half the time. The demo preset
therefore uses LayerNorm heads and no DropToken: train and eval forwards are then identical.
"""

from pathlib import Path

import torch

from gradharmony.train.config import load_config
from gradharmony.train.loop import build_model

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _demo_model(overrides=()):
    cfg = load_config(DEMO, ["data.kind=random", "data.vocab_size=50", *overrides],
                      check=False)
    torch.manual_seed(0)
    return cfg, build_model(cfg, vocab_size=50)


def _batch(cfg, n=6):
    d = cfg.data
    g = torch.Generator().manual_seed(1)
    return {"video": torch.rand(n, d.frames, d.crop, d.crop, 3, generator=g),
            "audio": torch.randn(n, int(d.clip_seconds * d.audio_rate), generator=g) * 0.3,
            "text": torch.randint(1, 50, (n, d.candidates, d.text_len), generator=g)}


def _train_vs_eval(model, batch):
    with torch.no_grad():
        out_train = model.train()(batch)
        out_eval = model.eval()(batch)
    return {k: float((out_train[k] - out_eval[k]).abs().max())
            for k in ("video_va", "video_vt", "audio_va", "text_vt")}


def test_demo_model_embeds_identically_in_train_and_eval_mode():
    cfg, model = _demo_model()
    gaps = _train_vs_eval(model, _batch(cfg))
    assert max(gaps.values()) < 1e-5, gaps


def test_batchnorm_heads_would_break_the_train_eval_identity():
    # the oracle check above can fail: the previous demo heads (BatchNorm) do
    cfg, model = _demo_model(["model.kwargs.head_norm=batchnorm"])
    assert _train_vs_eval(model, _batch(cfg))["video_vt"] > 1e-2
