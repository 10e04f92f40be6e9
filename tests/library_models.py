"""Small open_clip, timm and transformers models built offline from configs (random weights).

open_clip and timm import torchvision at import time, and torchvision has no CPU build for
this torch on the package index. :func:`import_library` then puts a placeholder
``torchvision`` in ``sys.modules`` (only when the real one cannot be imported): every name
resolves to an inert class, which is enough because these tests only build models (no image
transforms, no datasets, no torchvision ops).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
import types

import pytest


class _Placeholder:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("torchvision placeholder: not available in these tests")

    def __class_getitem__(cls, item):
        return cls


class _Meta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Meta(name, (_Placeholder,), {})


class _Module(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        full = f"{self.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        return _Meta(name, (_Placeholder,), {})


_SUBMODULES = ("transforms", "transforms.functional", "transforms.v2", "ops", "ops.misc",
               "datasets", "models", "models.feature_extraction", "utils", "io")  # fmt: skip


def _placeholder_torchvision() -> None:
    root = _Module("torchvision")
    root.__path__ = []
    root.__spec__ = importlib.machinery.ModuleSpec("torchvision", None, is_package=True)
    root.__version__ = "0.0"
    sys.modules["torchvision"] = root
    for sub in _SUBMODULES:
        name = f"torchvision.{sub}"
        mod = _Module(name)
        mod.__path__ = []
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = mod
        parent, _, leaf = name.rpartition(".")
        setattr(sys.modules[parent], leaf, mod)


def import_library(name: str):
    """Import open_clip / timm / transformers, or skip the test when it is not installed
    (with ``GRADHARMONY_REQUIRE_LIBS=1`` a missing library is an error, not a skip)."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # not installed, or a build for another torch
        for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[key]
        _placeholder_torchvision()
    if os.environ.get("GRADHARMONY_REQUIRE_LIBS") == "1":
        return importlib.import_module(name)
    return pytest.importorskip(name)


# -- the models: tiny widths, random weights, built from configs ------------------------------

B = 8


def _contrastive(za, zb, scale):
    import torch
    import torch.nn.functional as F

    za, zb = F.normalize(za, dim=-1), F.normalize(zb, dim=-1)
    logits = scale * za @ zb.T
    target = torch.arange(len(za))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _two_on_features(y):
    """Two losses on pooled features [B, D]: an in-batch contrastive one against fixed keys
    and a regression of the first half."""
    import torch

    g = torch.Generator().manual_seed(3)
    keys = torch.randn(y.shape[0], y.shape[-1], generator=g)
    half = y.shape[-1] // 2
    return {"va": _contrastive(y, keys, 5.0),
            "vt": (y[:, :half] - 0.5).pow(2).mean() * 10}  # fmt: skip


def _images(size=32, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g)


def _clip_case(model, images, text):
    """CLIP: image-text contrastive loss (learned logit_scale) and an image self-supervised
    loss between two views (SLIP-style)."""
    view = images.flip(-1)

    def run():
        img, txt, scale = model(images, text)
        return img, txt, scale, model.encode_image(view, normalize=True)

    def losses(out):
        img, txt, scale, img2 = out
        return {"va": _contrastive(img, txt, scale),
                "vt": _contrastive(img, img2, 10.0)}  # fmt: skip

    return model, run, losses


def open_clip_vit():
    import torch

    open_clip = import_library("open_clip")
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=2, width=32, head_width=16, patch_size=8, image_size=32,
                        ls_init_value=0.5),  # fmt: skip
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=2),
    )
    text = torch.randint(1, 64, (B, 8), generator=torch.Generator().manual_seed(1))
    return _clip_case(model, _images(), text)


def open_clip_resnet():
    import torch

    open_clip = import_library("open_clip")
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=dict(layers=(1, 1, 1, 1), width=8, head_width=8, image_size=64),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    ).eval()  # BatchNorm with running statistics: no cross-sample operation
    text = torch.randint(1, 64, (B, 8), generator=torch.Generator().manual_seed(1))
    return _clip_case(model, _images(64), text)


def _timm(name, size=32, eval_mode=False, **kwargs):
    timm = import_library("timm")
    model = timm.create_model(name, pretrained=False, num_classes=6, **kwargs)
    if eval_mode:
        model.eval()
    x = _images(size)
    return model, lambda: model(x), _two_on_features


def timm_vit():
    return _timm("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32, depth=2,
                 num_heads=2, init_values=0.5)  # fmt: skip


def timm_convnext():
    return _timm("convnext_atto", depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), ls_init_value=0.5)


def timm_resnet():
    return _timm("resnet18", eval_mode=True, layers=(1, 1, 1, 1), channels=(8, 8, 16, 16),
                 stem_width=8)  # fmt: skip


def _hf_small(**extra):
    return dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, **extra)  # fmt: skip


def hf_bert():
    import torch

    tr = import_library("transformers")
    model = tr.BertModel(tr.BertConfig(vocab_size=64, max_position_embeddings=16, **_hf_small()))
    ids = torch.randint(1, 64, (B, 6), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0

    def run():
        out = model(input_ids=ids, attention_mask=mask)
        return out.last_hidden_state, out.pooler_output

    def losses(out):
        tokens, pooled = out
        return {"va": _two_on_features(pooled)["va"], "vt": tokens.mean(1).pow(2).sum()}

    return model, run, losses


def hf_clip():
    import torch

    tr = import_library("transformers")
    text = tr.CLIPTextConfig(vocab_size=64, max_position_embeddings=8, hidden_size=16,
                             intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                             projection_dim=16)  # fmt: skip
    vision = tr.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, image_size=32, patch_size=8,
                                 projection_dim=16)  # fmt: skip
    model = tr.CLIPModel(tr.CLIPConfig(text_config=text.to_dict(),
                                       vision_config=vision.to_dict(), projection_dim=16))
    ids = torch.randint(1, 64, (B, 8), generator=torch.Generator().manual_seed(1))
    images = _images()

    def run():
        out = model(input_ids=ids, pixel_values=images)
        return out.image_embeds, out.text_embeds, model.get_image_features(
            pixel_values=images.flip(-1))

    def losses(out):
        img, txt, img2 = out
        img2 = getattr(img2, "pooler_output", img2)
        return {"va": _contrastive(img, txt, model.logit_scale.exp()),
                "vt": _contrastive(img, img2, 10.0)}  # fmt: skip

    return model, run, losses


def hf_llama_tied():
    import torch

    tr = import_library("transformers")
    config = tr.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                            max_position_embeddings=16, tie_word_embeddings=True)  # fmt: skip
    model = tr.LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    ids = torch.randint(1, 64, (B, 6), generator=torch.Generator().manual_seed(1))

    def losses(logits):
        return {"va": torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64),
                                                        ids[:, 1:].reshape(-1)),
                "vt": logits[:, -1].logsumexp(-1).mean()}  # fmt: skip

    return model, lambda: model(input_ids=ids).logits, losses


def hf_whisper_encoder():
    import torch

    tr = import_library("transformers")
    config = tr.WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2,
                              encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2,
                              decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=8,
                              vocab_size=64, dropout=0.0, pad_token_id=0, bos_token_id=1,
                              eos_token_id=2, decoder_start_token_id=1)  # fmt: skip
    encoder = tr.WhisperModel(config).get_encoder()
    encoder.embed_positions.requires_grad_(True)  # every parameter trainable
    feats = torch.randn(B, 8, 16, generator=torch.Generator().manual_seed(1))
    return encoder, lambda: encoder(feats).last_hidden_state.mean(1), _two_on_features


def hf_ast():
    import torch

    tr = import_library("transformers")
    config = tr.ASTConfig(num_mel_bins=16, max_length=24, patch_size=8, frequency_stride=8,
                          time_stride=8, **_hf_small())  # fmt: skip
    model = tr.ASTModel(config)
    feats = torch.randn(B, 24, 16, generator=torch.Generator().manual_seed(1))
    return model, lambda: model(feats).pooler_output, _two_on_features


MODELS = {
    "open_clip_vit": open_clip_vit, "open_clip_resnet": open_clip_resnet,
    "timm_vit": timm_vit, "timm_convnext": timm_convnext, "timm_resnet": timm_resnet,
    "hf_bert": hf_bert, "hf_clip": hf_clip, "hf_llama_tied": hf_llama_tied,
    "hf_whisper_encoder": hf_whisper_encoder, "hf_ast": hf_ast,
}  # fmt: skip
