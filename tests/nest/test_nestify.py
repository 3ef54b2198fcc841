"""nestify: width structure found on any network; masking equals slicing; closed forms on tiny nets."""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nest import (
    NestifiedModel,
    PrunedMultiheadAttention,
    UnorderedDimensionWarning,
    nestify,
    sliced_cost,
    sliced_network,
)
from bnn_nested.nn import recalibrate_bn
from bnn_nested.nn.bayes import sparse_vd_kl


class Mixed(nn.Module):
    """Residual adds, a 1x1 shortcut, a concatenation, a depthwise conv, GroupNorm, flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.a1 = nn.Conv2d(16, 16, 3, padding=1)
        self.a2 = nn.Conv2d(16, 16, 3, padding=1)
        self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.short = nn.Conv2d(16, 32, 1, stride=2)
        self.left = nn.Conv2d(32, 8, 1)
        self.right = nn.Conv2d(32, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x)))
        h = F.relu(h + self.a2(F.relu(self.gn(self.a1(h)))))
        h = F.relu(self.down(h) + self.short(h))
        h = torch.cat([F.relu(self.left(h)), F.relu(self.right(h))], 1)
        h = F.relu(self.dw(h))
        h = F.adaptive_avg_pool2d(self.pw(h), 4).flatten(1)
        return self.head(F.relu(self.fc(h)))


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.layer(self.embed(x)).mean(1))


def _nest(model, x, **kw):
    torch.manual_seed(0)
    return nestify(model.eval(), x, **kw).eval()


@torch.no_grad()
def test_mlp_matches_hand_sliced_closed_form():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    nm = _nest(net, x, groups=4, kept=0)
    assert nm.dims() == ["0"] and nm.structure["0"].groups == 4
    w1, b1, w2, b2 = net[0].weight, net[0].bias, net[2].weight, net[2].bias
    for width, h in [(0.25, 4), (0.5, 8), (1.0, 16)]:
        hand = F.relu(x @ w1[:h].T + b1[:h]) @ w2[:, :h].T + b2
        torch.testing.assert_close(nm(x, width=width), hand, rtol=1e-5, atol=1e-6)
        flops, params = sliced_cost(nm, width, x)
        assert flops == 2 * (8 * h + h * 4)
        assert params == 8 * h + h + h * 4 + 4


@torch.no_grad()
def test_mixed_graph_dimensions_and_roles():
    x = torch.randn(2, 3, 16, 16)
    nm = _nest(Mixed(), x, groups=4, kept=1)
    s = nm.structure
    # one residual dimension for stem + a2 (joined by the add), one for down + short
    res = {tuple(sorted(d.modules("out"))) for d in s.residual_dims()}
    assert ("a2", "stem") in res and ("down", "short") in res
    stem = next(d for d in s if "stem" in d.modules("out"))
    assert "bn" in stem.modules("norm") and {"a1", "down", "short"} <= set(stem.modules("in"))
    # GroupNorm: ordered groups are unions of its groups (4 of 4 channels)
    a1 = s["a1"]
    assert a1.modules("norm") == ["gn"] and a1.groups == 4
    # the concatenation: one dimension (the depthwise conv couples it) whose slices share one width
    cat = next(d for d in s if "left" in d.modules("out"))
    assert "right" in cat.modules("out") and "dw" in cat.modules("depthwise")
    assert cat.modules("in") == ["pw"]
    for name in ("left", "right"):
        assert cat.member(name, "out").group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert cat.dropped(2) == [4, 5, 6, 7, 12, 13, 14, 15]  # the second half of each slice
    assert "head" in s.unordered  # the classifier's outputs are never sliced
    assert nm.norm_followed_weights() == ["net.stem", "net.a1"]  # bn follows stem, gn follows a1


@torch.no_grad()
def test_property_random_widths_sliced_equals_masked_and_shapes_follow_dims():
    """Random global widths and per-dimension allocations on residual / concat / depthwise /
    attention graphs: the sliced network equals the masked one; its module shapes are the
    dimensions' kept channels (every member of a dimension sees the same width); params and FLOPs
    are those of the sliced shapes."""
    rng = random.Random(0)
    cases = [(Mixed(), torch.randn(3, 3, 16, 16)), (Attn(), torch.randn(3, 5, 6))]
    for model, x in cases:
        nm = _nest(model, x, groups=4, kept=1)
        for trial in range(6):
            if trial % 2:
                width = {d.name: rng.randint(1, d.groups) for d in nm.structure}
            else:
                width = rng.choice([0.1, 0.25, 0.5, 0.75, 1.0])
            masked = nm(x, width=width)
            small = sliced_network(nm, width, x)
            torch.testing.assert_close(small(x), masked, rtol=1e-5, atol=1e-5)
            with nm.width(width):
                active = nm.active_groups()
            mods = dict(small.named_modules())
            for d in nm.structure:
                a = active[d.name]
                for m in d.members:
                    kept = int((m.group < a).sum())
                    assert kept * d.groups == a * len(m.group)  # every member at the same width
                    mod = mods[m.module]
                    if m.role == "out":
                        assert (
                            getattr(mod, "out_channels", getattr(mod, "out_features", None)) == kept
                        )
                    elif m.role == "depthwise":
                        assert mod.out_channels == mod.in_channels == mod.groups == kept
                    elif m.role == "norm":
                        assert (
                            getattr(mod, "num_features", getattr(mod, "num_channels", None)) == kept
                        )
                    elif m.role == "heads":
                        assert isinstance(mod, PrunedMultiheadAttention) or a == d.groups
                        assert mod.num_heads == kept
            params = sum(p.numel() for p in small.parameters())
            assert sliced_cost(nm, width, x)[1] == params


@torch.no_grad()
def test_attention_heads_masked_equal_pruned_heads():
    x = torch.randn(2, 5, 6)
    nm = _nest(Attn(), x, groups=4, kept=0)
    heads = nm.structure["layer.self_attn.heads"]
    assert heads.kind == "heads" and heads.groups == 4
    assert "layer.linear1" in nm.dims()  # MLP hidden units ordered
    assert any("LayerNorm" in r for r in nm.structure.unordered.values())  # residual width not
    out = nm(x, width={"layer.self_attn.heads": 2})
    mha = nm.net.layer.self_attn
    pruned = PrunedMultiheadAttention.from_module(mha, torch.tensor([0, 1])).eval()
    h = nm.net.embed(x)
    ref_attn = pruned(h, h, h)[0]
    layer = nm.net.layer
    h2 = layer.norm1(h + ref_attn)
    h2 = layer.norm2(h2 + layer.linear2(F.relu(layer.linear1(h2))))
    torch.testing.assert_close(out, nm.net.head(h2.mean(1)), rtol=1e-5, atol=1e-5)


def test_training_masks_reach_ordering_units_and_are_shared():
    x = torch.randn(4, 3, 16, 16)
    nm = _nest(Mixed(), x, groups=4, kept=1)
    nm.train()
    seen: dict[str, torch.Tensor] = {}

    def spy(name):
        def hook(mod, args):
            seen[name] = mod._nest_mask.detach().clone()

        return hook

    handles = [
        nm.net.get_submodule(n).register_forward_pre_hook(spy(n)) for n in ("a1", "down", "short")
    ]
    loss = nm(x).square().mean()
    for h in handles:
        h.remove()
    stem = next(d for d in nm.structure if "stem" in d.modules("out"))
    # the three consumers of the stem dimension saw one sample of the mask
    torch.testing.assert_close(seen["down"], seen["short"])
    torch.testing.assert_close(seen["a1"], seen["down"][: seen["a1"].shape[0]])
    loss.backward()
    assert nm.unit(stem.name).r.grad is not None and nm.unit(stem.name).r.grad.abs().sum() > 0


def test_gaussian_weight_kl_weighted_by_keep_probability_of_the_produced_dimension():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    nm = _nest(
        net, torch.randn(2, 8), groups=4, kept=1, weight_posterior="gaussian", init_log_alpha=-3.0
    )
    unit = nm.unit("0")
    unit.hard = True  # exact categorical ordering KL: deterministic, so the sum can be compared
    keep = torch.cat([torch.ones(1), unit.keep_probs()]).repeat_interleave(4)  # per channel
    l1, l2 = nm.net[0], nm.net[2]
    expected = (
        unit.kl()
        + (sparse_vd_kl(l1.log_alpha).sum(1) * keep).sum()
        + sparse_vd_kl(l2.log_alpha).sum()
    )
    torch.testing.assert_close(nm.kl(), expected)
    assert l1.weight is net[0].weight  # means are the original parameters


@torch.no_grad()
def test_gaussian_layers_sample_in_training_and_use_means_in_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x = torch.randn(2, 3, 6, 6)
    ref = net(x)
    nm = _nest(net, x, groups=4, kept=0, weight_posterior="gaussian", init_log_alpha=0.0)
    torch.testing.assert_close(nm(x), ref)  # eval: the mean network
    nm.train()
    with nm.masking(False):
        assert not torch.allclose(nm(x), ref)


@torch.no_grad()
def test_bn_calibrated_per_width_and_export_uses_the_width_statistics():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    nm = _nest(Mixed(), x[:2], groups=4, kept=1)
    recalibrate_bn(nm, [(x, None)], widths=[0.5, 1.0])
    bn = nm.net.bn
    assert len(bn.calib_channels) == 2
    out = nm(x, width=0.5)
    torch.testing.assert_close(sliced_network(nm, 0.5, x[:2])(x), out, rtol=1e-5, atol=1e-5)
    # BN at width 0.5 normalises the calibration batch: its output has zero mean per kept channel
    with nm.width(0.5):
        h = bn(nm.net.stem(x))
    kept = nm.active_groups()  # after the block: width 1.0 again
    assert kept == {d.name: d.groups for d in nm.structure}
    assert h.mean((0, 2, 3)).abs().max() < 1e-4


def test_channel_mixing_op_unknown_to_the_graph_is_left_unordered_with_a_warning():
    class Mixer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            h = h - h.mean(1, keepdim=True)  # mixes channels: masking != slicing
            return self.c(self.b(h).mean((2, 3)))

    x = torch.randn(2, 3, 4, 4)
    with pytest.warns(UnorderedDimensionWarning, match="left unordered"):
        nm = _nest(Mixer(), x, groups=4, kept=0)
    assert "a" in nm.structure.unordered and "a" not in nm.dims()
    with torch.no_grad():
        torch.testing.assert_close(
            sliced_network(nm, 0.25, x)(x), nm(x, width=0.25), rtol=1e-5, atol=1e-5
        )


def test_exclude_and_bad_arguments():
    x = torch.randn(2, 3, 16, 16)
    nm = _nest(Mixed(), x, groups=4, kept=1, exclude=["left", "fc"])
    assert nm.structure.unordered["fc"] == "fc: excluded"
    assert not any("left" in d.modules("out") for d in nm.structure)
    assert "down" in nm.dims()  # left only consumes it: excluding left does not touch it
    with pytest.raises(ValueError, match="weight_posterior must be one of"):
        nestify(Mixed(), x, weight_posterior="laplace")
    with pytest.raises(ValueError, match="unknown dimension"):
        nm(x, width={"nope": 1})
    with pytest.raises(
        ValueError, match=r"width\['stem'\]: active groups must be an int in \[1, 4\]"
    ):
        nm(x, width={"stem": 9})


@torch.no_grad()
def test_torchvision_resnet18_converts_exactly():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = net(x)
    nm = nestify(net, x).eval()
    assert isinstance(nm, NestifiedModel) and len(nm.structure) >= 8
    torch.testing.assert_close(nm(x), ref)
    for w in (0.25, 0.5):
        torch.testing.assert_close(
            sliced_network(nm, w, x)(x), nm(x, width=w), rtol=1e-4, atol=1e-4
        )
    # one residual stream per stage: each is one dimension with several producers
    assert len(nm.structure.residual_dims()) == 4
    from bnn_nested.deploy.export import export_width

    small = export_width(nm, 0.25, x)  # sliced, BN folded into the convolutions
    assert not any(isinstance(m, nn.BatchNorm2d) for m in small.modules())
    torch.testing.assert_close(small(x), nm(x, width=0.25), rtol=1e-4, atol=1e-4)


def test_attention_flops_match_hand_count_with_the_fused_fast_path_on():
    """nn.TransformerEncoderLayer's fused eval path hides its matmuls from FlopCounterMode; the
    count must still see them (2 x MACs, batch 1, 5 tokens)."""
    x = torch.randn(2, 5, 6)
    nm = _nest(Attn(), x, groups=4, kept=0)
    t, e, d, ff = 5, 16, 4, 32

    def hand(heads: int, hidden: int) -> int:
        embed, qkv = t * 6 * e, t * e * 3 * heads * d
        attention, out = 2 * heads * t * t * d, t * heads * d * e
        return 2 * (embed + qkv + attention + out + 2 * t * e * hidden + e * 3)

    assert sliced_cost(nm, 1.0, x)[0] == hand(4, ff)
    assert sliced_cost(nm, 0.5, x)[0] == hand(2, ff // 2)


class _Res(nn.Module):
    def __init__(self, c: int, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(c, hidden, 3, padding=1), nn.Conv2d(hidden, c, 1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn(self.b(F.relu(self.a(x)))))


class _Cat(nn.Module):
    def __init__(self, c: int, left: int, right: int) -> None:
        super().__init__()
        self.l, self.r = nn.Conv2d(c, left, 1), nn.Conv2d(c, right, 3, padding=1)

    def forward(self, x):
        return torch.cat([F.relu(self.l(x)), F.relu(self.r(x))], 1)


class _Sep(nn.Module):  # depthwise + pointwise
    def __init__(self, c: int, out: int) -> None:
        super().__init__()
        self.dw, self.pw = nn.Conv2d(c, c, 3, padding=1, groups=c), nn.Conv2d(c, out, 1)

    def forward(self, x):
        return F.relu(self.pw(F.relu(self.dw(x))))


class _Tokens(nn.Module):  # conv features -> attention over positions -> pooled features
    def __init__(self, c: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.TransformerEncoderLayer(c, heads, 2 * c, dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.attn(x.flatten(2).transpose(1, 2)).mean(1)


def _random_graph(rng: random.Random) -> nn.Module:
    c = 4 * rng.randint(2, 4)
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, padding=1), nn.ReLU()]
    for _ in range(rng.randint(2, 4)):
        kind = rng.choice(["res", "cat", "sep"])
        if kind == "res":
            layers.append(_Res(c, 4 * rng.randint(1, 4)))
        elif kind == "cat":
            left, right = 4 * rng.randint(1, 3), 4 * rng.randint(1, 3)
            layers.append(_Cat(c, left, right))
            c = left + right
        else:
            out = 4 * rng.randint(1, 4)
            layers.append(_Sep(c, out))
            c = out
    if rng.random() < 0.5:
        layers.append(_Tokens(c, 2 if c % 4 else 4))
    else:
        layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c, 8), nn.ReLU()]
        c = 8
    return nn.Sequential(*layers, nn.Linear(c, 3))


@pytest.mark.slow
@torch.no_grad()
def test_property_random_graphs_sliced_equals_masked_at_random_widths():
    """20 random graphs of residual / concatenation / depthwise / attention blocks, each at random
    global widths and per-dimension allocations: the sliced network equals the masked one, and
    every member of a dimension keeps the same fraction of its channels. The structure found must
    be right without the conversion check's help (its warning is an error here)."""
    rng = random.Random(1)
    for _ in range(20):
        torch.manual_seed(rng.randint(0, 10_000))
        net = _random_graph(rng).eval()
        x = torch.randn(2, 3, 6, 6)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnorderedDimensionWarning)
            nm = nestify(net, x, groups=4, kept=rng.randint(0, 1)).eval()
        assert len(nm.structure) > 0
        for trial in range(3):
            if trial == 2:
                width = {d.name: rng.randint(1, d.groups) for d in nm.structure}
            else:
                width = rng.choice([0.2, 0.5, 0.8])
            torch.testing.assert_close(
                sliced_network(nm, width, x)(x), nm(x, width=width), rtol=1e-5, atol=1e-5
            )
            with nm.width(width):
                active = nm.active_groups()
            for d in nm.structure:
                for m in d.members:
                    assert int((m.group < active[d.name]).sum()) * d.groups == active[d.name] * len(
                        m.group
                    )


def test_residual_branches_and_norm_followed_of_the_zoo_resnet_read_from_the_structure():
    from bnn_nested.config import ModelConfig
    from bnn_nested.models import build_model

    cfg = ModelConfig(name="resnet", variant="20", groups=4, kept=1, norm="batch")
    model = build_model(cfg, {}, (3, 8, 8), 10)
    expected = [[f"net.blocks.{i}.block1.0", f"net.blocks.{i}.conv2"] for i in range(9)]
    assert sorted(model.residual_blocks()) == sorted(expected)  # every block, shortcuts left out
    followed = set(model.norm_followed_weights())
    assert {"net.stem.0", "net.blocks.3.shortcut.0", "net.blocks.8.conv2"} <= followed
    assert "net.classifier" not in followed


@torch.no_grad()
def test_torchvision_vision_transformer_heads_and_mlp_ordered_exactly():
    vt = pytest.importorskip("torchvision.models.vision_transformer")
    torch.manual_seed(0)
    net = vt.VisionTransformer(
        32, 8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    net.heads.head.weight.normal_(0, 0.02)  # zero-initialised head: give the output a scale
    x = torch.randn(2, 3, 32, 32)
    ref = net.eval()(x)
    nm = nestify(net, x, groups=4, kept=1).eval()
    kinds = sorted((d.kind, d.groups) for d in nm.structure)
    assert kinds == [("channels", 4)] * 2 + [("heads", 4)] * 2  # MLP hidden + heads per layer
    torch.testing.assert_close(nm(x), ref)
    for w in (0.25, 0.5):
        torch.testing.assert_close(
            sliced_network(nm, w, x)(x), nm(x, width=w), rtol=1e-4, atol=1e-5
        )


@torch.no_grad()
def test_head_mask_on_unbatched_input_matches_batched():
    """Regression (review): a 2-D (L, E) query was transposed like a batch-first 3-D one."""
    from bnn_nested.nest import NestedMultiheadAttention

    torch.manual_seed(0)
    mha = NestedMultiheadAttention.from_module(nn.MultiheadAttention(8, 4, batch_first=True).eval())
    mha.head_mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    q = torch.randn(5, 8)
    torch.testing.assert_close(mha(q, q, q)[0], mha(q[None], q[None], q[None])[0][0])
