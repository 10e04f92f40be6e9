"""convert_multihead_attention: the converted attention computes what nn.MultiheadAttention
computes (outputs, attention weights, parameter gradients), and the Harmonizer on a
converted model matches the brute-force oracle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradharmony.harmonize import LinearMultiheadAttention, convert_multihead_attention
from tests.harmonize_oracle import check_model
from tests.test_harmonize_replicas import MiniCLIP, contrastive

pytestmark = pytest.mark.usefixtures("one_thread")
N, L, S, E, H = 3, 4, 5, 8, 2


def _masks(kind):
    g = torch.Generator().manual_seed(1)
    pad = torch.zeros(N, S, dtype=torch.bool)
    pad[0, -1] = pad[2, 1] = True
    causal = torch.triu(torch.ones(L, S, dtype=torch.bool), 2)
    return {
        "none": {},
        "2d_bool": {"attn_mask": causal},
        "2d_float": {"attn_mask": torch.randn(L, S, generator=g)},
        "3d_bool_and_padding": {"attn_mask": torch.rand(N * H, L, S, generator=g) < 0.3,
                                "key_padding_mask": pad},  # fmt: skip
        "padding_float": {"key_padding_mask": torch.randn(N, S, generator=g)},
        "2d_float_and_padding": {"attn_mask": torch.randn(L, S, generator=g),
                                 "key_padding_mask": torch.randn(N, S, generator=g)},
    }[kind]


def _inputs(batch_first, kdim=E, vdim=E, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(N, L, E), (N, S, kdim), (N, S, vdim)]
    q, k, v = (torch.randn(*s, generator=g, requires_grad=True) for s in shapes)
    return (q, k, v) if batch_first else tuple(t.transpose(0, 1) for t in (q, k, v))


def _grads(module, qkv, out):
    seed = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    params = [p for _, p in sorted(module.named_parameters())]
    return torch.autograd.grad(out, [*qkv, *params], seed)


def _packed(mha, converted_grads, converted):
    """The converted module's parameter gradients put back into mha's layout."""
    by_name = dict(zip([n for n, _ in sorted(converted.named_parameters())],
                       converted_grads))  # fmt: skip
    out = {"out_proj.weight": by_name["out_proj.weight"]}
    if mha.in_proj_bias is not None:
        out["out_proj.bias"] = by_name["out_proj.bias"]
    if mha._qkv_same_embed_dim:
        out["in_proj_weight"] = by_name["in_proj.weight"]
        if mha.in_proj_bias is not None:
            out["in_proj_bias"] = by_name["in_proj.bias"]
    else:
        for p in "qkv":
            out[f"{p}_proj_weight"] = by_name[f"{p}_proj.weight"]
        if mha.in_proj_bias is not None:
            out["in_proj_bias"] = torch.cat([by_name[f"{p}_proj.bias"] for p in "qkv"])
    return [out[n] for n, _ in sorted(mha.named_parameters())]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("masks", ["none", "2d_bool", "2d_float", "3d_bool_and_padding",
                                   "padding_float", "2d_float_and_padding"])  # fmt: skip
@pytest.mark.parametrize("weights", ["none", "average", "per_head"])
def test_converted_attention_equals_the_original(batch_first, masks, weights):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    converted = LinearMultiheadAttention.from_module(mha)
    kwargs = dict(_masks(masks), need_weights=weights != "none",
                  average_attn_weights=weights == "average")  # fmt: skip
    qkv = _inputs(batch_first)
    want_out, want_w = mha(*qkv, **kwargs)
    got_out, got_w = converted(*qkv, **kwargs)
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-6)
    assert (got_w is None) == (want_w is None)
    if want_w is not None:
        torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-6)
    got, want = _grads(converted, qkv, got_out), _grads(mha, qkv, want_out)
    for a, b in zip(list(got[:3]) + _packed(mha, got[3:], converted), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_cross_attention_with_other_key_and_value_widths(bias):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, bias=bias, kdim=6, vdim=3, batch_first=True)
    converted = LinearMultiheadAttention.from_module(mha)
    qkv = _inputs(True, kdim=6, vdim=3)
    kwargs = _masks("3d_bool_and_padding")
    want_out, want_w = mha(*qkv, **kwargs)
    got_out, got_w = converted(*qkv, **kwargs)
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-6)
    got, want = _grads(converted, qkv, got_out), _grads(mha, qkv, want_out)
    for a, b in zip(list(got[:3]) + _packed(mha, got[3:], converted), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("shared", ["key_is_value", "all_distinct"])
def test_cross_attention_of_equal_widths_takes_the_needed_columns(batch_first, shared):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H, batch_first=batch_first)
    converted = LinearMultiheadAttention.from_module(mha)
    q, k, v = _inputs(batch_first)
    qkv = (q, k, k) if shared == "key_is_value" else (q, k, v)
    want_out, want_w = mha(*qkv, **_masks("2d_float"))
    got_out, got_w = converted(*qkv, **_masks("2d_float"))
    torch.testing.assert_close(got_out, want_out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-6)
    got, want = _grads(converted, qkv, got_out), _grads(mha, qkv, want_out)
    for a, b in zip(list(got[:3]) + _packed(mha, got[3:], converted), want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_unbatched_input_and_is_causal_with_its_mask():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(E, H)
    converted = LinearMultiheadAttention.from_module(mha)
    x = torch.randn(L, E)
    causal = torch.triu(torch.ones(L, L, dtype=torch.bool), 1)
    wrong = torch.zeros(L, L)  # with is_causal and no weights asked, replaced by causal
    for kwargs in ({}, {"attn_mask": causal, "is_causal": True},
                   {"attn_mask": wrong, "is_causal": True, "need_weights": False}):
        for want, got in zip(mha(x, x, x, **kwargs), converted(x, x, x, **kwargs)):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("need_weights", [False, True])
def test_dropout_draws_what_the_original_draws_in_training_only(need_weights):
    mha = nn.MultiheadAttention(E, H, dropout=0.5, batch_first=True)
    converted = LinearMultiheadAttention.from_module(mha)
    x = torch.randn(N, L, E)
    assert converted.training and converted.dropout == 0.5
    a, b = converted(x, x, x)[0], converted(x, x, x)[0]
    assert not torch.allclose(a, b)
    results = []
    for module in (converted, mha):  # same seed: the same dropped weights
        torch.manual_seed(5)
        results.append(module(x, x, x, need_weights=need_weights))
    for got, want in zip(*results):
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    converted.eval()
    torch.testing.assert_close(converted(x, x, x)[0], mha.eval()(x, x, x)[0], atol=1e-6,
                               rtol=1e-6)  # fmt: skip


def test_conversion_copies_state_and_keeps_shared_modules_shared():
    torch.manual_seed(0)
    model = nn.ModuleDict({"a": nn.MultiheadAttention(E, H), "head": nn.Linear(E, 2)})
    model.b = model.a  # one module used twice
    model.a.in_proj_weight.requires_grad_(False)
    model.eval()
    state = {k: v.clone() for k, v in model.a.state_dict().items()}
    convert_multihead_attention(model)
    assert isinstance(model.a, LinearMultiheadAttention) and model.b is model.a
    assert not model.a.training
    frozen = sorted(n for n, p in model.a.named_parameters() if not p.requires_grad)
    assert frozen == ["in_proj.weight"]
    fresh = LinearMultiheadAttention(E, H)
    fresh.load_state_dict(state)  # an nn.MultiheadAttention state_dict loads
    for (name, p), (_, q) in zip(fresh.state_dict().items(), model.a.state_dict().items()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(model.a.in_proj.weight, state["in_proj_weight"])
    separate = nn.MultiheadAttention(E, H, kdim=3, vdim=3)
    split = LinearMultiheadAttention(E, H, kdim=3, vdim=3)
    split.load_state_dict(separate.state_dict())
    torch.testing.assert_close(split.v_proj.bias, separate.in_proj_bias[2 * E :])
    torch.testing.assert_close(split.k_proj.weight, separate.k_proj_weight)
    assert isinstance(convert_multihead_attention(nn.MultiheadAttention(E, H)),
                      LinearMultiheadAttention)  # fmt: skip


def test_bad_configurations_raise_naming_the_module_or_argument():
    model = nn.Sequential(nn.Linear(E, E))
    model.attn = nn.MultiheadAttention(E, H, add_bias_kv=True)
    with pytest.raises(ValueError, match="cannot convert attn: .*add_bias_kv"):
        convert_multihead_attention(model)
    with pytest.raises(ValueError, match="num_heads"):
        LinearMultiheadAttention(E, 3)
    converted = LinearMultiheadAttention(E, H)
    x = torch.randn(L, N, E)
    with pytest.raises(ValueError, match="is_causal"):
        converted(x, x, x, is_causal=True)
    with pytest.raises(ValueError, match="query must be 2-D or 3-D"):
        converted(x[None], x[None], x[None])


class Attention(nn.Module):
    """Self-attention with a causal mask and key padding, batch first or not."""

    def __init__(self, batch_first, dim=8, cross=False):
        super().__init__()
        self.batch_first, self.cross = batch_first, cross
        self.ctx = nn.Linear(dim, dim)  # cross attention: key and value from this layer
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=batch_first)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        if self.cross:
            h = self.attn(x, self.ctx(x), self.ctx(x), need_weights=False)[0]
            return self.head(h.mean(1))
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        pad = torch.zeros(x.shape[0], t, dtype=torch.bool)
        pad[0, -1] = True
        h = x if self.batch_first else x.transpose(0, 1)
        h = self.attn(h, h, h, attn_mask=causal, key_padding_mask=pad)[0]
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch_first,cross", [(True, False), (False, False), (True, True)])
def test_harmonizer_on_converted_attention_matches_the_oracle(batch_first, cross):
    """cross: in_proj called on the query and on the key (two calls, sliced outputs)."""
    torch.manual_seed(0)
    model = convert_multihead_attention(Attention(batch_first, cross=cross))
    x, target = torch.randn(4, 5, 8), torch.randn(4, 3)

    def losses(y):
        return {"va": (y - target).pow(2).mean(), "vt": y[:, 0].exp().mean()}

    check_model(model, lambda: model(x), losses, batch=4, granularities=("sample", 2),
                check=True)  # fmt: skip


def test_harmonizer_on_a_converted_clip_replica_matches_the_oracle():
    torch.manual_seed(0)
    model = convert_multihead_attention(MiniCLIP())
    assert isinstance(model.visual.attn, LinearMultiheadAttention)
    images, text = torch.randn(8, 3, 16, 16), torch.randint(0, 32, (8, 6))

    def run():
        img, txt, scale = model(images, text)
        return img, txt, scale, model.encode_image(images.flip(-1))

    def losses(out):
        img, txt, scale, img2 = out
        return {"va": contrastive(img, txt, scale), "vt": contrastive(img, img2, 10.0)}

    check_model(model, run, losses, batch=8, granularities=("sample", 4), check=True)


def test_converted_open_clip_equals_the_original_and_matches_the_oracle():
    from tests.library_models import MODELS

    torch.manual_seed(0)
    model, run, losses = MODELS["open_clip_vit"]()
    want = run()
    convert_multihead_attention(model)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    for a, b in zip(run(), want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    check_model(model, run, losses, batch=8, granularities=("sample", 4, "batch"), check=True)
