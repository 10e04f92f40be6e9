"""The rule registry, the generic torch.func rule, parameters used outside recorded layers
(landings, loss-level), tied parameters, and the safety nets, against the brute-force oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradharmony.harmonize import Harmonizer, register_rule
from gradharmony.harmonize._generic import GenericWork
from gradharmony.harmonize._layers import NormWork
from gradharmony.harmonize._rules import rule_for, unregister_rule
from tests.harmonize_oracle import check_model

pytestmark = pytest.mark.usefixtures("one_thread")


def two_losses(y):
    """Two losses on a [B, k] output, with in-batch coupling like contrastive losses."""
    s = y @ y.T
    return {"va": (y[:, 0] - 1).pow(2).mean() + s.logsumexp(1).mean(),
            "vt": y[:, 1:].sin().sum() - 0.3 * s.diagonal().mean()}  # fmt: skip


def _check(model, x, **kwargs):
    torch.manual_seed(1)
    with torch.no_grad():  # make the random init less symmetric
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    check_model(model, lambda: model(x), two_losses, batch=x.shape[0], **kwargs)


# -- the two silent errors ------------------------------------------------------------------


class FrozenInProj(nn.Module):
    """nn.MultiheadAttention uses out_proj's weight through a functional call."""

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(8, 2, batch_first=batch_first)
        self.attn.in_proj_weight.requires_grad_(False)
        self.attn.in_proj_bias.requires_grad_(False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # [B, T, 8]
        h = x if self.batch_first else x.transpose(0, 1)
        h = self.attn(h, h, h, need_weights=False)[0]
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch_first", [True, False])
def test_functionally_used_linear_weight_is_harmonized(batch_first):
    _check(FrozenInProj(batch_first), torch.randn(4, 5, 8))


class LayerNorm2d(nn.LayerNorm):
    """Channels-first LayerNorm overriding forward (as in timm)."""

    def forward(self, x):  # [B, C, H, W]
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 2, stride=2)
        self.norm = LayerNorm2d(channels)
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("channels", [4, 6])  # 4: width equals channels; 6: it does not
def test_layernorm_subclass_overriding_forward_takes_the_generic_rule(channels):
    assert rule_for(LayerNorm2d(channels)) is None
    assert rule_for(nn.LayerNorm(channels)) is NormWork
    _check(ConvNorm(channels), torch.randn(4, 3, 8, 8))


# -- parameters outside layer calls: where they land ------------------------------------------


class TinyViT(nn.Module):
    """Class token, position table and output projection as bare parameters of a container;
    a position Embedding looked up with [1, T] ids; layer scale in a block with sub-layers."""

    def __init__(self, dim=8, tokens=4):
        super().__init__()
        self.patch = nn.Linear(6, dim)
        self.cls = nn.Parameter(torch.randn(dim))
        self.pos = nn.Parameter(torch.randn(tokens + 1, dim))
        self.pos_ids = nn.Embedding(tokens + 1, dim)
        self.register_buffer("ids", torch.arange(tokens + 1).unsqueeze(0))
        self.fc = nn.Linear(dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))
        self.proj = nn.Parameter(torch.randn(dim, 3))

    def forward(self, x):  # [B, tokens, 6]
        h = self.patch(x)
        h = torch.cat([self.cls.view(1, 1, -1).expand(h.shape[0], 1, -1), h], 1)
        h = h + self.pos + self.pos_ids(self.ids)
        h = h + self.gamma * F.gelu(self.fc(h))
        # the class token alone would give every sample the same output (no token mixing)
        return (h[:, 0] + h[:, 1:].mean(1)) @ self.proj


@pytest.mark.parametrize("batch", [4, 5])  # 5: the token count equals the batch
def test_bare_parameters_and_broadcast_tables_are_attributed_where_they_land(batch):
    _check(TinyViT(), torch.randn(batch, 4, 6), granularities=("sample", "batch"))


class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.group = nn.GroupNorm(2, 8)
        self.rms = nn.RMSNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.group(self.depthwise(F.gelu(self.conv(x))))
        return self.head(self.rms(h.mean((2, 3))))


def test_grouped_and_depthwise_convs_groupnorm_and_rmsnorm():
    _check(Norms(), torch.randn(4, 4, 5, 5))


class TiedLM(nn.Module):
    def __init__(self, vocab=7, dim=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, ids):
        return self.lm_head(F.gelu(self.fc(self.embed(ids)))).mean(1)


@pytest.mark.parametrize("strategy", ["auto", "ghost"])
def test_tied_parameters_sum_every_use_with_cross_terms(strategy):
    ids = torch.randint(0, 7, (4, 3))
    _check(TiedLM(), ids, strategy=strategy)


class Attention(nn.Module):
    def __init__(self, batch_first, dim=8, bias_kv=False):
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(dim, 2, batch_first=batch_first, add_bias_kv=bias_kv)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):  # [B, T, dim] with T == B
        t = x.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        pad = torch.zeros(x.shape[0], t, dtype=torch.bool)
        pad[0, -1] = True
        h = x if self.batch_first else x.transpose(0, 1)
        h = self.attn(h, h, h, attn_mask=causal, key_padding_mask=pad)[0]
        h = h if self.batch_first else h.transpose(0, 1)
        return self.head(h.mean(1))


@pytest.mark.parametrize("batch_first,bias_kv", [(True, False), (False, False), (False, True)])
def test_multihead_attention_with_a_shared_2d_mask_as_long_as_the_batch(batch_first, bias_kv):
    """bias_kv: the configuration the attention rule leaves to the generic rule."""
    _check(Attention(batch_first, bias_kv=bias_kv), torch.randn(4, 4, 8))


# -- loss-level parameters ------------------------------------------------------------------


class Contrastive(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(1.5))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.normalize(self.a(x), dim=-1), F.normalize(self.b(x), dim=-1)


def _clip_losses(model):
    def losses(out):
        za, zb = out
        logits = model.logit_scale.exp() * za @ zb.T + model.bias
        target = torch.arange(len(za))
        return {"va": F.cross_entropy(logits, target), "vt": (za * zb).sum(1).pow(2).mean()}

    return losses


def test_loss_level_parameters_get_the_weighted_plain_gradient():
    """A scalar used outside every layer, a parameter used only after the model's forward,
    and a declared one (for models used through methods other than forward)."""
    model = Contrastive()
    x = torch.randn(4, 5)
    check_model(model, lambda: model(x), _clip_losses(model), batch=4, loss_level=(model.bias,))
    check_model(model, lambda: model(x),
                _clip_losses(model), batch=4, loss_level=(model.bias,),
                loss_params=["bias"])  # fmt: skip
    a, b = model.a, model.b

    def encode(x):  # the model's forward is not called: only the declaration tells
        return F.normalize(a(x), dim=-1), F.normalize(b(x), dim=-1)

    check_model(model, lambda: encode(x), _clip_losses(model), batch=4,
                loss_level=(model.bias,), loss_params=["bias"])  # fmt: skip
    with pytest.raises(ValueError, match="not parameters"):
        Harmonizer(model, method="gr", loss_params=["nope"])
    harm = Harmonizer(model, method="gr", loss_params=["a.weight"])
    with pytest.raises(ValueError, match=r"\['a\.weight'\] are used inside"):
        harm.backward(_clip_losses(model)(model(x)))


# -- the safety nets ------------------------------------------------------------------------


class Doubler(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x * self.w


def test_check_catches_a_wrong_rule_and_the_generic_rule_catches_mixed_rows():
    @register_rule(Doubler)
    class HalfRule(GenericWork):  # deliberately wrong: halves every gradient
        def absorb(self, index, loss, delta, slot=0):
            super().absorb(index, loss, delta / 2, slot)

    try:
        model = nn.Sequential(nn.Linear(3, 3), Doubler())
        harm = Harmonizer(model, method="gr", check=True)
        y = model(torch.randn(4, 3))
        with pytest.raises(RuntimeError, match=r"check=True.*\['1\.w'\]"):
            harm.backward(two_losses(y))
        assert all(p.grad is None for p in model.parameters())
    finally:
        unregister_rule(Doubler)

    class BatchCentred(nn.Module):  # rows interact: no per-group re-run can be exact
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return (x - x.mean(0)) * self.w

    model = nn.Sequential(nn.Linear(3, 3), BatchCentred())
    harm = Harmonizer(model, method="gr")
    with pytest.raises(RuntimeError, match="rows interact"):
        harm.backward(two_losses(model(torch.randn(4, 3))))


def test_unaccounted_parameters_are_all_named_at_once():
    class Stray(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)
            self.u, self.v = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))

        def forward(self, x):
            return self.lin(x), (self.u * self.v).sum()

    model = Stray()
    harm = Harmonizer(model, method="gr")
    y, extra = model(torch.randn(4, 3))
    losses = two_losses(y)
    losses["va"] = losses["va"] + extra
    with pytest.raises(RuntimeError, match=r"\['u', 'v'\]"):
        harm.backward(losses)


def test_rules_apply_to_exact_types_and_unchanged_subclasses():
    assert rule_for(nn.MultiheadAttention(4, 2).out_proj) is not None  # forward unchanged
    assert rule_for(nn.Conv2d(4, 4, 3, groups=2)) is None  # grouped: the generic rule
    assert rule_for(nn.RMSNorm(4)) is None


class CastingLayerNorm(nn.LayerNorm):
    """As open_clip's LayerNorm: overrides forward, computes the same function."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


def test_subclasses_computing_their_parents_function_take_the_parents_rule():
    from gradharmony.harmonize._layers import LinearWork, same_function_rule

    ln, lin, scaled = CastingLayerNorm(4), nn.Linear(4, 4), ScaledLinear(4, 4)
    x = torch.randn(3, 4)
    assert same_function_rule(ln, x, ln(x)) is NormWork
    assert same_function_rule(lin, x, lin(x)) is LinearWork
    assert same_function_rule(scaled, x, scaled(x)) is None
    model = nn.Sequential(nn.Linear(3, 4), CastingLayerNorm(4), ScaledLinear(4, 3))
    _check(model, torch.randn(4, 3))


def test_landings_pulled_back_in_chunks_of_groups(monkeypatch):
    from gradharmony.harmonize import _graph

    monkeypatch.setattr(_graph.Landings.__init__, "__defaults__", (1,))  # one group a pull
    _check(TinyViT(), torch.randn(4, 4, 6), granularities=("sample",), methods=("both",))


class Masked(nn.Module):
    """A custom layer taking a batch-free table as a keyword argument."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, x, table=None):  # x: [B, T, 3], table: [T, 3]
        return x * self.w * table


def test_a_batch_free_argument_as_long_as_the_batch_is_caught_not_split_silently():
    layer = Masked()
    model = nn.ModuleDict({"lin": nn.Linear(3, 3), "layer": layer})
    harm = Harmonizer(model, method="gr")
    x, table = torch.randn(4, 4, 3), torch.randn(4, 3)  # T == B: the table looks batched
    y = layer(model["lin"](x), table=table).sum(1)
    with pytest.raises(RuntimeError, match="re-run on each group"):
        harm.backward(two_losses(y))
    harm.remove()
    x5 = torch.randn(4, 5, 3)  # T != B: the table is shared by every group
    check_model(model, lambda: layer(model["lin"](x5), table=torch.ones(5, 3) * 0.5).sum(1),
                two_losses, batch=4)  # fmt: skip
