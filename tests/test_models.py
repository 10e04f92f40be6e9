"""VATT: shapes and token counts per preset, DropToken, sharing, layer contract, bad input."""

import pytest
import torch
from torch import nn

from gradharmony.models import (
    PRESETS,
    VATTConfig,
    count_parameters,
    create_model,
    drop_tokens,
    get_config,
)

ALLOWED = (nn.Linear, nn.LayerNorm, nn.Embedding, nn.BatchNorm1d, nn.Conv1d, nn.Conv2d, nn.Conv3d)


pytestmark = pytest.mark.usefixtures("one_thread")


def micro(**kw):
    """A very small VATT: 8 frames of 32px (8 video tokens), 512 samples (8 audio tokens)."""
    cfg = dict(width=32, depth=1, heads=2, mlp_dim=64, video_frames=8, video_size=32,
               video_patch=(4, 16, 16), audio_seconds=0.5, audio_rate=1024, audio_patch=64,
               vocab_size=40, text_embed_dim=16, max_words=6, num_candidates=2, va_dim=24,
               vt_dim=12, dropout=0.0)
    agnostic = kw.pop("_ma", True)
    cfg.update(kw)
    return create_model(VATTConfig(**cfg), modality_agnostic=agnostic)


def batch_for(cfg, B=3, k=None, L=None):
    k = k or cfg.num_candidates
    L = L or cfg.max_words
    text = torch.randint(1, cfg.vocab_size, (B, k, L))
    text[:, :, L // 2:] = 0  # padding at the end
    return {"video": torch.rand(B, cfg.video_frames, cfg.video_size, cfg.video_size, 3),
            "audio": torch.rand(B, cfg.audio_samples) * 2 - 1,
            "text": text, "text_mask": text != 0}


def transformer_params(D, depth, mlp):
    """Closed form: per layer qkv + proj + 2 LayerNorms + MLP, plus the final LayerNorm."""
    per_layer = (3 * D * D + 3 * D) + (D * D + D) + 2 * (2 * D) + (D * mlp + mlp) + (mlp * D + D)
    return depth * per_layer + 2 * D


def seq_lengths(model, run):
    """Sequence length each backbone call receives, in call order."""
    seen = []
    backbones = {id(b): b for b in map(model.backbone_for, ("video", "audio", "text"))}
    handles = [b.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
               for b in backbones.values()]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return seen


# -- presets ---------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("agnostic", [True, False])
def test_preset_parameter_counts_closed_form(preset, agnostic):
    cfg = get_config(preset)
    with torch.device("meta"):
        model = create_model(preset, modality_agnostic=agnostic)
    tx = transformer_params(cfg.width, cfg.depth, cfg.mlp_dim)
    assert count_parameters(model.backbone_for("video")) == tx
    D, (pt, ph, pw), (gt, gh, gw) = cfg.width, cfg.video_patch, cfg.video_grid
    tokenizers = ((pt * ph * pw * 3 * D + D) + (D * D + D) + (gt + gh + gw) * D
                  + (cfg.audio_patch * D + D) + (D * D + D) + cfg.num_audio_tokens * D
                  + cfg.vocab_size * cfg.text_embed_dim + (cfg.text_embed_dim * D + D)
                  + cfg.max_words * D + 3 * D)  # the last term: three aggregation tokens
    post = 3 * (D * D + D)
    va, vt = cfg.va_dim, cfg.vt_dim
    heads = (D * va + 2 * va + va * va + 2 * va + va * vt + 2 * vt  # video (batchnorm)
             + D * va + va + D * vt + vt)  # audio, text
    n_backbones = 1 if agnostic else 3
    assert count_parameters(model) == n_backbones * tx + tokenizers + post + heads


def test_medium_is_near_the_published_size():
    with torch.device("meta"):
        model = create_model("medium")
    # transformer + the raw patch/word projections: the 155M the VATT paper reports
    core = (count_parameters(model.backbone) + count_parameters(model.video_tokenizer.proj)
            + count_parameters(model.audio_tokenizer.proj)
            + count_parameters(model.text_tokenizer.pre_proj))
    assert 150e6 < core < 160e6
    assert 180e6 < count_parameters(model) < 185e6  # + projections, tables, heads, word table
    with torch.device("meta"):
        frozen = create_model("medium", text_embed_trainable=False)
    assert (count_parameters(frozen) - count_parameters(frozen, trainable_only=True)
            == 2**16 * 300)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_cpu_presets_forward_shapes_and_token_counts(preset):
    model = create_model(preset, depth=1)
    cfg = model.config
    assert (cfg.video_frames, cfg.video_size, cfg.audio_samples, cfg.max_words,
            cfg.num_candidates) == (16, 64, 32000, 16, 4)
    b = batch_for(cfg, B=2)
    model.eval()
    with torch.no_grad():
        lengths = seq_lengths(model, lambda: model(b))
        out = model(b)
    assert lengths == [1 + 64, 1 + 125, 1 + 16]
    assert lengths == [model.num_tokens(m) for m in ("video", "audio", "text")]
    _check_outputs(out, 2, 4, cfg.width)


@pytest.mark.parametrize("preset", ["base", "medium"])
def test_large_presets_shapes_on_meta(preset):
    with torch.device("meta"):
        model = create_model(preset).train()
        cfg = model.config
        b = {"video": torch.rand(2, 32, 224, 224, 3), "audio": torch.rand(2, 153600),
             "text": torch.randint(1, 100, (2, 5, 16))}
        lengths = seq_lengths(model, lambda: model(b))
        out = model(b)
    assert cfg.num_video_tokens == 8 * 14 * 14 and cfg.num_audio_tokens == 1200
    assert lengths == [1 + 784, 1 + 600, 1 + 16]  # DropToken keeps half in training
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "video_feat": (2, cfg.width), "video_va": (2, 512), "video_vt": (2, 256),
        "audio_feat": (2, cfg.width), "audio_va": (2, 512),
        "text_feat": (2, 5, cfg.width), "text_vt": (2, 5, 256)}


def _check_outputs(out, B, k, D):
    shapes = {"video_va": (B, 512), "audio_va": (B, 512), "video_vt": (B, 256),
              "text_vt": (B, k, 256), "video_feat": (B, D), "audio_feat": (B, D),
              "text_feat": (B, k, D)}
    assert {n: tuple(v.shape) for n, v in out.items()} == shapes
    for name in ("video_va", "audio_va", "video_vt", "text_vt"):
        torch.testing.assert_close(out[name].norm(dim=-1), torch.ones(out[name].shape[:-1]))


# -- DropToken ---------------------------------------------------------------------------

def test_droptoken_counts_in_training_and_off_in_eval():
    model = micro(audio_seconds=1.0, droptoken_rate=0.5)  # 8 video, 16 audio tokens
    b = batch_for(model.config, B=4)
    model.train()
    assert seq_lengths(model, lambda: model(b)) == [1 + 4, 1 + 8, 1 + 6]
    model.eval()
    assert seq_lengths(model, lambda: model(b)) == [1 + 8, 1 + 16, 1 + 6]
    model = micro(audio_seconds=1.0, droptoken_rate=0.75).train()
    assert seq_lengths(model, lambda: model(b)) == [1 + 2, 1 + 4, 1 + 6]


def test_drop_tokens_keeps_distinct_tokens_of_each_sample():
    B, N, D = 5, 20, 3
    x = torch.arange(B * N, dtype=torch.float).reshape(B, N, 1).expand(B, N, D)
    y = drop_tokens(x, 7)
    assert y.shape == (B, 7, D)
    subsets = []
    for i in range(B):
        ids = y[i, :, 0].long().tolist()
        assert len(set(ids)) == 7 and all(i * N <= t < (i + 1) * N for t in ids)
        subsets.append(tuple(t - i * N for t in ids))
    assert len(set(subsets)) > 1  # each sample draws its own subset
    assert drop_tokens(x, N) is x


# -- sharing and the harmonizer contract --------------------------------------------------

def test_shared_backbone_is_one_set_of_weights():
    ma, ms = micro(), micro(_ma=False)
    assert ma.backbone_for("video") is ma.backbone_for("audio") is ma.backbone_for("text")
    parts = [ms.backbone_for(m) for m in ("video", "audio", "text")]
    ptrs = [{p.data_ptr() for p in b.parameters()} for b in parts]
    assert not (ptrs[0] & ptrs[1] or ptrs[0] & ptrs[2] or ptrs[1] & ptrs[2])
    tx = count_parameters(ma.backbone)
    assert count_parameters(ms) - count_parameters(ma) == 2 * tx
    # a change to the shared weights changes every modality's features
    b = batch_for(ma.config)
    ma.eval()
    before = ma(b)
    with torch.no_grad():
        ma.backbone.blocks[0].fc2.weight.add_(torch.randn_like(ma.backbone.blocks[0].fc2.weight))
    after = ma(b)
    for name in ("video_feat", "audio_feat", "text_feat"):
        assert not torch.allclose(before[name], after[name])


def test_only_harmonizer_compatible_layers():
    for agnostic in (True, False):
        model = micro(_ma=agnostic)
        for name, module in model.named_modules():
            if list(module.parameters(recurse=False)):
                assert isinstance(module, ALLOWED), f"{name}: {type(module).__name__}"


@pytest.mark.parametrize("agnostic", [True, False])
def test_each_triplet_is_independent_on_dim0_in_eval(agnostic):
    model = micro(_ma=agnostic).eval()
    b = batch_for(model.config, B=4)
    full = model(b)
    for i in (0, 3):
        one = model({k: v[i:i + 1] for k, v in b.items()})
        for name, v in one.items():
            torch.testing.assert_close(v[0], full[name][i], rtol=1e-4, atol=1e-5)


def test_padding_tokens_do_not_change_text_features():
    model = micro().eval()
    b = batch_for(model.config)
    noisy = b["text"].clone()
    noisy[~b["text_mask"]] = 7  # different ids where the mask says padding
    a = model.encode_text(b["text"], b["text_mask"])["text_vt"]
    c = model.encode_text(noisy, b["text_mask"])["text_vt"]
    torch.testing.assert_close(a, c)
    assert not torch.allclose(a, model.encode_text(noisy)["text_vt"])  # default mask: ids != 0


def test_channels_first_video_equals_channels_last():
    model = micro().eval()
    v = torch.rand(2, 8, 32, 32, 3)
    a = model.encode_video(v)["video_va"]
    torch.testing.assert_close(a, model.encode_video(v.permute(0, 4, 1, 2, 3))["video_va"])


def test_forward_encodes_the_modalities_present():
    model = micro().eval()
    b = batch_for(model.config)
    out = model({"audio": b["audio"], "has_text": torch.zeros(3, dtype=torch.bool)})
    assert set(out) == {"audio_feat", "audio_va"}


# -- training options ------------------------------------------------------------------

def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = micro(droptoken_rate=0.0, depth=2).train()
    b = batch_for(model.config, B=4)

    def grads():
        model.zero_grad()
        out = model(b)
        sum(v.pow(3).sum() for v in out.values()).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.backbone.grad_checkpointing
    ckpt = grads()
    for g, h in zip(plain, ckpt):
        torch.testing.assert_close(g, h, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_forward_and_backward():
    model = micro().train()
    b = batch_for(model.config, B=4)
    ref = {k: v.detach() for k, v in model.eval()(b).items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(b)
    for name in ("video_va", "audio_va", "video_vt", "text_vt"):
        cos = (out[name].float() * ref[name]).sum(-1)
        assert bool((cos > 0.98).all()), name
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(b)
    sum(v.float().sum() for v in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("norm", ["layernorm", "none"])
def test_head_norm_options(norm):
    model = micro(head_norm=norm)
    kinds = {type(m) for m in model.head.modules()}
    assert nn.BatchNorm1d not in kinds
    assert (nn.LayerNorm in kinds) == (norm == "layernorm")
    assert model.eval()(batch_for(model.config))["video_vt"].shape == (3, 12)


# -- bad input ---------------------------------------------------------------------------

def _bad(key, value):
    def run():
        model = micro().eval()
        b = batch_for(model.config)
        if callable(value):
            b[key] = value(b[key])
        else:
            b[key] = value
        model(b)
    return run


@pytest.mark.parametrize("run, err, match", [
    (_bad("video", lambda v: v[0]), ValueError, r"video must have shape \[B, T, H, W, 3\]"),
    (_bad("video", lambda v: v[..., :2]), ValueError, "video must have 3 colour channels"),
    (_bad("video", lambda v: (v * 255).to(torch.uint8)), ValueError, "video must be a float"),
    (_bad("video", lambda v: v[:, :3]), ValueError, "smaller than one patch"),
    (_bad("video", lambda v: torch.cat([v, v], 1)), ValueError, "larger than the positional"),
    (_bad("video", lambda v: v.index_fill(0, torch.tensor([1]), float("nan"))), ValueError,
     "video contains NaN"),
    (_bad("audio", lambda a: a[:, None]), ValueError, r"audio must have shape \[B, S\]"),
    (_bad("audio", lambda a: a[:, :10]), ValueError, "fewer than one patch"),
    (_bad("audio", lambda a: torch.cat([a, a], 1)), ValueError, "more than the positional"),
    (_bad("audio", lambda a: a.index_fill(1, torch.tensor([5]), float("inf"))), ValueError,
     "audio contains NaN or infinite"),
    (_bad("audio", lambda a: a[:2]), ValueError, "batch sizes differ"),
    (_bad("text", lambda t: t[:, 0]), ValueError, r"text must have shape \[B, k, L\]"),
    (_bad("text", lambda t: t.float()), ValueError, "integer token ids"),
    (_bad("text", lambda t: torch.cat([t, t], 2)), ValueError, "longer than the positional"),
    (_bad("text", lambda t: t + 100), ValueError, r"ids must lie in \[0, vocab_size=40\)"),
    (_bad("text_mask", lambda m: m.long()), ValueError, "text_mask must be a bool tensor"),
    (_bad("video", "not a tensor"), TypeError, "video must be a torch.Tensor"),
])
def test_bad_input_is_reported_clearly(run, err, match):
    with pytest.raises(err, match=match):
        run()


def test_bad_config_and_preset():
    with pytest.raises(ValueError, match="unknown VATT preset"):
        create_model("huge")
    with pytest.raises(ValueError, match="unknown VATTConfig field"):
        create_model("tiny", widht=3)
    with pytest.raises(ValueError, match="divisible by heads"):
        VATTConfig(width=10, heads=3)
    with pytest.raises(ValueError, match="head_norm"):
        VATTConfig(head_norm="groupnorm")
    with pytest.raises(ValueError, match="smaller than one patch"):
        VATTConfig(video_frames=2)
