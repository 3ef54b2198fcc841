"""Importance ordering: exact permutations, hand-computed scores, loading plain weights."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nest import (
    UnorderedDimensionWarning,
    importance_scores,
    init_ordering_from_importance,
    load_plain_weights,
    nestify,
    order_by_importance,
    permute_dimension,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_nestify import Attn, Mixed  # noqa: E402


def _trained_like(net: nn.Module) -> nn.Module:
    """Random, non-trivial weights and BN statistics (not the identity initialisation)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.2)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            elif isinstance(m, nn.GroupNorm):
                m.weight.copy_(torch.rand(m.num_channels, generator=g) + 0.2)
    return net


@pytest.mark.parametrize("make, shape", [(Mixed, (3, 3, 16, 16)), (Attn, (3, 5, 6))])
@pytest.mark.parametrize("importance", ["l1", "bn_gamma", "taylor"])
def test_importance_ordering_preserves_the_function_in_float64(make, shape, importance):
    """Residual, concatenation, depthwise, GroupNorm, flatten (Mixed) and attention heads + MLP
    (Attn): the permuted network equals the original at full width (max abs diff <= 1e-5)."""
    torch.manual_seed(0)
    net = _trained_like(make()).double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
    data = [(x, torch.tensor([0, 1, 2]))] if importance == "taylor" else None
    # these nets have dimensions without an affine norm: bn_gamma says it falls back to l1 there
    fallback = (
        pytest.warns(UserWarning, match="no affine norm; using 'l1'")
        if importance == "bn_gamma"
        else contextlib.nullcontext()
    )
    with fallback, warnings.catch_warnings():  # every dimension must stay ordered
        warnings.simplefilter("error", UnorderedDimensionWarning)  # (else nothing is tested)
        nm = nestify(
            net, x, groups=4, kept=1, order="importance", importance=importance, data=data
        ).eval()
    with torch.no_grad():
        assert (nm(x) - ref).abs().max() <= 1e-5
    # and it did move channels: group importance is non-increasing in every unsliced dimension
    for d in nm.structure:
        gi = nm.group_importance[d.name]
        if d.root_slice is None or len(torch.unique(d.root_slice)) == 1:
            assert torch.all(gi[:-1] >= gi[1:] - 1e-12), (d.name, gi)


def test_random_permutation_of_every_dimension_is_exact():
    torch.manual_seed(1)
    net = _trained_like(Mixed()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    ref = net(x).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnorderedDimensionWarning)
        nm = nestify(net, x, groups=4, kept=1).eval()
    for d in nm.structure:
        perm = torch.arange(d.size)
        slices = d.root_slice if d.root_slice is not None else torch.zeros(d.size, dtype=torch.long)
        for s in torch.unique(slices):
            idx = (slices == s).nonzero().flatten()
            perm[idx] = idx[torch.randperm(len(idx))]
        if any(isinstance(nm.net.get_submodule(m.module), nn.GroupNorm) for m in d.members):
            continue  # GroupNorm dimensions move whole groups only (tested above)
        permute_dimension(nm, d, perm)
    with torch.no_grad():
        assert (nm(x) - ref).abs().max() <= 1e-5


def test_scores_equal_hand_computed_values_on_a_tiny_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2, 0], [0.5, 0, 0], [-3, 1, 1], [0, 0, 0.25]]))
        net[1].weight.copy_(torch.tensor([0.1, -4.0, 2.0, 0.5]))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    nm = nestify(net, x, groups=4, kept=0).eval()
    l1 = importance_scores(nm, "l1")["0"]
    torch.testing.assert_close(l1, torch.tensor([3.0, 0.5, 5.0, 0.25], dtype=torch.float64))
    gamma = importance_scores(nm, "bn_gamma")["0"]
    torch.testing.assert_close(gamma, torch.tensor([0.1, 4.0, 2.0, 0.5], dtype=torch.float64))
    # Taylor (Molchanov et al. 2019) with BN on the dimension: the gate after BN,
    # (g_gamma * gamma + g_beta * beta)^2
    ref = nn.Sequential(*[m for m in net]).eval()
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    bn = ref[1]
    hand = (bn.weight.grad * bn.weight + bn.bias.grad * bn.bias) ** 2
    taylor = importance_scores(nm, "taylor", data=[(x, y)])["0"]
    torch.testing.assert_close(taylor, hand.double().detach(), rtol=1e-5, atol=1e-9)
    # without a norm: (sum over the channel's weights and bias of grad * weight)^2
    plain = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    nm2 = nestify(plain, x, groups=4, kept=0).eval()
    plain.zero_grad()
    F.cross_entropy(plain(x), y).backward()
    hand = (
        (plain[0].weight.grad * plain[0].weight).sum(1) + plain[0].bias.grad * plain[0].bias
    ) ** 2
    taylor = importance_scores(nm2, "taylor", data=[(x, y)])["0"]
    torch.testing.assert_close(taylor, hand.double().detach(), rtol=1e-5, atol=1e-9)
    # ordering by l1 puts channel 2 (5.0) first, then 0 (3.0), 1 (0.5), 3 (0.25)
    order_by_importance(nm, "l1")
    torch.testing.assert_close(nm.net[0].weight.abs().sum(1), torch.tensor([5.0, 3.0, 0.5, 0.25]))
    torch.testing.assert_close(nm.net[1].weight, torch.tensor([2.0, 0.1, -4.0, 0.5]))


def test_ordering_posterior_starts_at_the_importance_profile():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    nm = nestify(net, torch.randn(2, 3), groups=4, kept=1)
    init_ordering_from_importance(
        nm, {"0": torch.tensor([9.0, 3.0, 2.0, 1.0], dtype=torch.float64)}
    )
    # ordered groups 1..3 hold importance 3, 2, 1: P(b >= k) = 1, 3/6, 1/6, except that continuation
    # logits are clipped to +-5 (sigmoid(5) = 0.9933), which scales every keep probability by 0.9933
    expected = torch.tensor([1.0, 0.5, 1 / 6]) * torch.sigmoid(torch.tensor(5.0))
    torch.testing.assert_close(nm.unit("0").keep_probs(), expected, atol=1e-4, rtol=0)


def test_load_plain_weights_one_line_errors(tmp_path):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    nm = nestify(
        nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 3), groups=4
    )
    good = tmp_path / "plain.pt"
    torch.save(net.state_dict(), good)
    load_plain_weights(nm, str(good))
    assert torch.equal(nm.net[0].weight, net[0].weight)
    bad = tmp_path / "bad.pt"
    torch.save(
        {
            "0.weight": torch.zeros(5, 3),
            **{k: v for k, v in net.state_dict().items() if k != "0.weight"},
        },
        bad,
    )
    with pytest.raises(
        ValueError, match=r"tensor '0.weight' has shape \(5, 3\), the model needs \(4, 3\)"
    ):
        load_plain_weights(nm, str(bad))
    with pytest.raises(ValueError, match="missing tensor '2.bias'"):
        torch.save({k: v for k, v in net.state_dict().items() if k != "2.bias"}, bad)
        load_plain_weights(nm, str(bad))
    with pytest.raises(ValueError, match="model.init_from: no such file"):
        load_plain_weights(nm, str(tmp_path / "nope.pt"))

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, bad)
    with pytest.raises(ValueError, match="not a weights-only state dict"):
        load_plain_weights(nm, str(bad))


@torch.no_grad()
def test_ordering_moves_dead_channels_to_the_end_so_half_width_is_exact():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    net[0].weight[[0, 2, 4, 6]] = 0.0  # four dead hidden units (bias 0 too)
    net[0].bias[[0, 2, 4, 6]] = 0.0
    x = torch.randn(6, 3)
    full = net(x)
    plain = nestify(net, x, groups=4, kept=0).eval()
    assert (plain(x, width=0.5) - full).abs().max() > 1e-3  # dead units among the first half
    ordered = nestify(net, x, groups=4, kept=0, order="importance", importance="l1").eval()
    torch.testing.assert_close(ordered(x, width=0.5), full)


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.GroupNorm(8, 8, affine=False), nn.ReLU(), nn.Conv2d(8, 4, 1)
        ),
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.PReLU(), nn.Conv2d(8, 4, 1)
        ),  # one shared slope
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.Conv2d(8, 4, 1)),
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.ReLU(), nn.Conv2d(8, 4, 1)
        ),
    ],
)
def test_permutation_of_norms_without_affine_and_prelu_is_exact(make):
    """Regression (review): a GroupNorm without affine and a one-slope PReLU made it crash."""
    torch.manual_seed(0)
    net = make().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    ref = net(x).detach()
    nm = nestify(net, x, groups=4, kept=0).eval()
    assert len(nm.structure) == 1
    permute_dimension(nm, nm.structure.dims[0], torch.randperm(8))
    with torch.no_grad():
        assert (nm(x) - ref).abs().max() <= 1e-10
