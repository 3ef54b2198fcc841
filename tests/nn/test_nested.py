"""Widths: hard training masks equal truncation, the width API, costs of the sliced network, ordering units."""

import math

import pytest
import torch
from torch import nn

from bnn_nested.cost import count_flops, count_params
from bnn_nested.distributions import DEFAULT_PRIOR_PI
from bnn_nested.nest import nestify
from bnn_nested.nn import (
    OrderingUnit,
    active_groups,
    group_size,
)
from tests.zoo import mlp


class TinyCNN(nn.Module):
    """conv -> BN -> ReLU twice, then a linear classifier, on 4 x 4 images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 4 * 4, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.flatten(1))


def test_hard_training_mask_equals_truncation_to_that_width_with_batch_norm():
    """In training (batch statistics), a hard mask with truncation ``b`` computes what the model
    computes at the per-dimension width of ``kept + b`` groups."""
    model = nestify(TinyCNN(), torch.randn(2, 1, 4, 4), groups=4, kept=1, ordering={"hard": True})
    model.train()
    x = torch.randn(6, 1, 4, 4)
    b = {"conv1": 1, "conv2": 2}  # ordered groups kept per dimension
    assert model.dims() == list(b)
    for name, u in model.ordering_units():
        m = torch.zeros(u.K)
        m[: b[name]] = 1
        u.sample_mask = lambda batch=None, u=u, m=m: u.expand_groups(m)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masked = model(x)
    model.load_state_dict(state)
    with model.masking(False):
        truncated = model(x, width={n: 1 + k for n, k in b.items()})
    torch.testing.assert_close(masked, truncated, atol=1e-5, rtol=1e-5)
    with model.masking(False):
        assert not torch.allclose(model(x), truncated)  # the truncation matters


def test_width_context_manager_restores_and_validates():
    model = mlp(6, 3, hidden=[8], groups=4, kept=1)
    with model.width(0.5):
        assert model.active_groups() == {"features.0": 1 + 2}
        assert model.current_width == 0.5
    assert model.active_groups() == {"features.0": 4} and model.current_width == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="width must be in"):
            model(torch.randn(2, 6), width=bad)
    with pytest.raises(ValueError, match="unknown dimension"):
        model.set_width({"nope": 2})


def test_active_groups_formula():
    assert active_groups(1.0, 16, 2) == 16
    assert active_groups(0.5, 16, 2) == 2 + 7
    assert active_groups(0.01, 16, 2) == 3
    assert active_groups(0.25, 4, 0) == 1


def test_groups_must_divide():
    with pytest.raises(ValueError, match="divide"):
        group_size(10, 3)
    with pytest.raises(ValueError, match="kept"):
        OrderingUnit(8, 4, kept=4)


@pytest.mark.parametrize("width", [0.25, 0.5, 1.0])
def test_params_and_flops_match_sliced_shapes(width):
    model = mlp(10, 4, hidden=[32, 16], groups=8, kept=0)  # the sliced network's shapes:
    h1 = active_groups(width, 8, 0) * 4
    h2 = active_groups(width, 8, 0) * 2
    x = torch.randn(7, 10)
    expected_params = (10 * h1 + h1) + (h1 * h2 + h2) + (h2 * 4 + 4)
    assert count_params(model, x, width) == expected_params
    assert count_flops(model, x, width) == 2 * 7 * (10 * h1 + h1 * h2 + h2 * 4)


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
    u.train()
    assert u.draws_mask(training=True) and not u.draws_mask(training=False)  # identity in eval
    y = u.sample_mask(5)  # one mask per example
    assert y.shape == (5, 8)
    assert torch.equal(y[:, :2], torch.ones(5, 2))  # kept group always kept
    assert torch.equal(y[:, 0::2], y[:, 1::2])  # one mask value per group of 2 channels
    assert (y >= 0).all() and (y <= 1).all() and (y[:, 1:].diff(dim=1) <= 1e-6).all()  # downhill
    by_hand = torch.tensor([1.0] + keep).repeat_interleave(2)  # keep scaling's channel factors
    torch.testing.assert_close(u.channel_keep_probs(), by_hand)
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
