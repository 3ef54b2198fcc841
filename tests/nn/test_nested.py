"""Nested layers: slicing equals zeroing, masks after activation equal slicing, costs match shapes."""

import math

import pytest
import torch
from torch import nn

from bnn_nested.cost import count_flops, count_params
from bnn_nested.distributions import DEFAULT_PRIOR_PI
from bnn_nested.models import NestedMLP
from bnn_nested.nn import (
    NestedBatchNorm2d,
    NestedConv2d,
    NestedLinear,
    NestedModel,
    OrderingUnit,
    active_groups,
)


class TinyCNN(NestedModel):
    def __init__(self, groups=4, kept=1):
        super().__init__()
        self.conv1 = NestedConv2d(1, 8, 3, padding=1, order_groups=groups, kept=kept)
        self.bn1 = NestedBatchNorm2d(8)
        self.ou1 = OrderingUnit(8, groups, kept, hard=True)
        self.conv2 = NestedConv2d(8, 12, 3, padding=1, order_groups=groups, kept=kept)
        self.bn2 = NestedBatchNorm2d(12)
        self.ou2 = OrderingUnit(12, groups, kept, hard=True)
        self.fc = NestedLinear(12 * 4 * 4, 3, ordered=False)

    def forward_full(self, x):
        h = self.ou1(torch.relu(self.bn1(self.conv1(x))))
        h = self.ou2(torch.relu(self.bn2(self.conv2(h))))
        return self.fc(h.flatten(1))


def _zeroing_hooks(model, width):
    """Forward hooks zeroing, at full width, the channels a width-``width`` network drops."""
    hooks = []
    for _, u in model.ordering_units():
        keep = active_groups(width, u.groups, u.kept) * u.group_size

        def hook(mod, inp, out, keep=keep):
            out = out.clone()
            out[:, keep:] = 0
            return out

        hooks.append(u.register_forward_hook(hook))
    return hooks


@pytest.mark.parametrize("width", [0.1, 0.25, 0.5, 0.8, 1.0])
def test_sliced_mlp_equals_full_network_with_dropped_outputs_zeroed(width):
    model = NestedMLP(10, 4, hidden=[32, 16], groups=8, kept=1).eval()
    x = torch.randn(5, 10)
    sliced = model(x, width=width)
    hooks = _zeroing_hooks(model, width)
    full_zeroed = model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(sliced, full_zeroed, atol=1e-6, rtol=1e-5)


# slicing uses the full-width running statistics here (no calibrate_bn): the warning is expected
@pytest.mark.filterwarnings("ignore::bnn_nested.nn.batchnorm.UncalibratedWidthWarning")
@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_sliced_cnn_equals_zeroed_in_eval(width):
    model = TinyCNN()
    model.train()
    with model.masking(False):
        for _ in range(3):  # give BN some running statistics
            model(torch.randn(8, 1, 4, 4))
    model.eval()
    x = torch.randn(3, 1, 4, 4)
    sliced = model(x, width=width)
    hooks = _zeroing_hooks(model, width)
    zeroed = model(x)
    for h in hooks:
        h.remove()
    torch.testing.assert_close(sliced, zeroed, atol=1e-5, rtol=1e-5)


def test_hard_training_mask_equals_sliced_network_with_batch_norm():
    """Mask after BN + ReLU: a hard mask with truncation b computes the sliced network (train mode)."""
    model = TinyCNN(groups=4, kept=1).train()
    x = torch.randn(6, 1, 4, 4)
    b = {"ou1": 1, "ou2": 2}  # ordered groups kept per unit
    for name, u in model.ordering_units():
        m = torch.zeros(u.K)
        m[: b[name]] = 1
        u.sample_mask = lambda batch=None, u=u, m=m: u.expand_groups(m)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masked = model(x)
    model.load_state_dict(state)
    with model.masking(False):
        sliced = model(x, width={"conv1": 1 + b["ou1"], "conv2": 1 + b["ou2"]})
    torch.testing.assert_close(masked, sliced, atol=1e-5, rtol=1e-5)


def test_width_context_manager_restores_and_validates():
    model = NestedMLP(6, 3, hidden=[8], groups=4, kept=1)
    layer = model.features[0]
    with model.width(0.5):
        assert layer.active_out_groups == 1 + 2
        assert model.current_width == 0.5
    assert layer.active_out_groups == 4 and model.current_width == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="width must be in"):
            model(torch.randn(2, 6), width=bad)
    with pytest.raises(ValueError, match="unknown layer"):
        model.set_width({"nope": 2})


def test_active_groups_formula():
    assert active_groups(1.0, 16, 2) == 16
    assert active_groups(0.5, 16, 2) == 2 + 7
    assert active_groups(0.01, 16, 2) == 3
    assert active_groups(0.25, 4, 0) == 1


def test_groups_must_divide():
    with pytest.raises(ValueError, match="divide"):
        NestedLinear(4, 10, order_groups=3)
    with pytest.raises(ValueError, match="kept"):
        OrderingUnit(8, 4, kept=4)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_params_and_flops_match_sliced_shapes(width):
    model = NestedMLP(10, 4, hidden=[32, 16], groups=8, kept=0)
    h1 = active_groups(width, 8, 0) * 4
    h2 = active_groups(width, 8, 0) * 2
    x = torch.randn(7, 10)
    expected_params = (10 * h1 + h1) + (h1 * h2 + h2) + (h2 * 4 + 4)
    assert count_params(model, x, width) == expected_params
    assert count_flops(model, x, width) == 2 * 7 * (10 * h1 + h1 * h2 + h2 * 4)


def test_conv_flops_and_params_exact():
    conv = NestedConv2d(3, 8, 3, padding=1, order_groups=4)
    conv.set_width(0.5)
    x = torch.randn(2, 3, 5, 5)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        y = conv(x)
    assert y.shape == (2, 4, 5, 5)
    assert fc.get_total_flops() == 2 * 2 * 4 * 5 * 5 * 3 * 3 * 3
    from bnn_nested.nn import active_param_count

    assert active_param_count(conv) == 4 * 3 * 9 + 4


def test_nested_batchnorm_updates_only_active_channels():
    bn = NestedBatchNorm2d(6).train()
    bn(torch.randn(4, 2, 3, 3) + 5)
    assert (bn.running_mean[:2] > 0.1).all() and torch.equal(bn.running_mean[2:], torch.zeros(4))


def test_linear_input_follows_previous_width():
    lin = NestedLinear(8, 4, order_groups=2)
    x = torch.randn(3, 5)
    y = lin(x)
    assert y.shape == (3, 4)
    with torch.no_grad():  # independent: the leading 5 input columns of the full weight
        expect = x @ lin.weight[:, :5].T + lin.bias
        padded = nn.functional.linear(torch.cat([x, torch.zeros(3, 3)], 1), lin.weight, lin.bias)
    torch.testing.assert_close(y, expect)
    torch.testing.assert_close(y, padded)  # slicing the input == zero-padding it to full width
    with pytest.raises(ValueError, match="at most 8"):
        lin(torch.randn(3, 9))


def _stick_breaking_by_hand(r: list[float], pi: float):
    """Independent closed forms for K = len(r): ``q(b)``, ``p(b)`` and ``P(b >= k)``, in float64.

    ``q(b) = prod_{j<=b} beta_j (1 - beta_{b+1})`` with ``beta_j = sigmoid(r_j)`` (``q(K)`` without
    the last factor); ``p(b) = pi^b (1 - pi)``, ``p(K) = pi^K``; ``P(b >= k) = prod_{j<=k} beta_j``.
    """
    beta = [1 / (1 + math.exp(-v)) for v in r]
    K = len(r)
    q = [math.prod(beta[:b]) * (1 - beta[b]) for b in range(K)] + [math.prod(beta)]
    p = [pi**b * (1 - pi) for b in range(K)] + [pi**K]
    keep = [math.prod(beta[:k]) for k in range(1, K + 1)]
    return q, p, keep


def test_ordering_unit_modes():
    u = OrderingUnit(8, 4, kept=1, per_example=True)  # K = 3 ordered groups of 2 channels
    r = [2.0, 0.5, -1.0]
    with torch.no_grad():
        u.r.copy_(torch.tensor(r))
    q, p, keep = _stick_breaking_by_hand(r, DEFAULT_PRIOR_PI)
    x = torch.ones(5, 8)
    u.train()
    y = u(x)
    assert y.shape == (5, 8)
    assert torch.equal(y[:, :2], torch.ones(5, 2))  # kept group always kept
    assert torch.equal(y[:, 0::2], y[:, 1::2])  # one mask value per group of 2 channels
    assert (y >= 0).all() and (y <= 1).all() and (y[:, 1:].diff(dim=1) <= 1e-6).all()  # downhill
    u.eval()
    assert torch.equal(u(x), x)
    u.keep_scaling = True
    by_hand = torch.tensor([1.0] + keep).repeat_interleave(2).expand(5, 8)
    torch.testing.assert_close(u(x), by_hand)
    u.keep_scaling = False
    u.hard = True  # hard masks: the exact categorical KL(q(b) || p(b)), here by hand
    kl = sum(qb * math.log(qb / pb) for qb, pb in zip(q, p, strict=True))
    torch.testing.assert_close(u.kl().double(), torch.tensor(kl, dtype=torch.float64))
    # relaxed masks: kl() estimates the relaxed KL at the sampled masks (here the mean over 100
    # per-example masks); the relaxed KL is >= the categorical KL (data processing): over 40 such
    # estimates (4000 masks), the mean minus 4 standard errors must not fall below it
    u.hard = False
    u.train()
    estimates = []
    for _ in range(40):
        u.sample_mask(100)
        estimates.append(u.kl().detach().double())
    est = torch.stack(estimates)
    assert est.mean() - 4 * est.std() / 40**0.5 >= kl - 1e-6, (est.mean(), kl)
