"""Scale-shift-invariant regularizer: invariance, AM-GM minimum, residual variant."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from bnn_nested.regularization import InvariantRegularizer


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6, bias=False),
        nn.ReLU(),
        nn.Linear(6, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
    ).double()


SHIFT = (4.0, 0.125, 2.0)  # prod = 1


def _sq_norms(model) -> list[float]:
    return [m.weight.pow(2).sum().item() for m in model if isinstance(m, nn.Linear)]


def test_invariant_under_scale_shift_while_l2_changes():
    model = _mlp()
    x = torch.randn(7, 4, dtype=torch.float64)
    reg = InvariantRegularizer(coefficient=0.3)
    reg.setup(model)
    assert reg.layers == ["0", "2", "4"]
    out, value, l2 = model(x), reg.penalty(model).item(), sum(_sq_norms(model))
    with torch.no_grad():
        for a, m in zip(SHIFT, [model[0], model[2], model[4]]):
            m.weight.mul_(a)
    assert torch.allclose(model(x), out, rtol=1e-10, atol=1e-12)  # same function
    assert math.isclose(reg.penalty(model).item(), value, rel_tol=1e-5)
    assert not math.isclose(sum(_sq_norms(model)), l2, rel_tol=0.1)


def test_value_is_min_over_shifts_of_sum_of_squares():
    model = _mlp()
    reg = InvariantRegularizer(coefficient=1.0)
    reg.setup(model)
    s = np.array(_sq_norms(model))

    def shifted_l2(t):  # log a = (t0, t1, -t0-t1): prod a = 1
        loga = np.array([t[0], t[1], -t[0] - t[1]])
        return float(np.sum(np.exp(2 * loga) * s))

    best = minimize(shifted_l2, x0=np.zeros(2), method="BFGS", options={"gtol": 1e-12})
    assert math.isclose(reg.value().item(), best.fun, rel_tol=1e-5)
    # closed form (AM-GM): L * geometric mean of the squared norms
    assert math.isclose(reg.value().item(), 3 * np.prod(s) ** (1 / 3), rel_tol=1e-12)
    assert best.fun < s.sum()


def test_gradient_matches_direct_formula():
    model = _mlp()
    reg = InvariantRegularizer(coefficient=0.7)
    reg.setup(model)
    reg.penalty(model).backward()
    ours = [m.weight.grad.clone() for m in (model[0], model[2], model[4])]
    model.zero_grad()
    prod = (
        model[0].weight.pow(2).sum() * model[2].weight.pow(2).sum() * model[4].weight.pow(2).sum()
    )
    (0.7 * 3 * prod ** (1 / 3)).backward()
    for g, m in zip(ours, (model[0], model[2], model[4])):
        assert torch.allclose(g, m.weight.grad, rtol=1e-10)


def test_include_exclude_select_the_chain():
    model = _mlp()
    reg = InvariantRegularizer(include=["0", "4"])
    reg.setup(model)
    assert reg.layers == ["0", "4"]
    reg = InvariantRegularizer(exclude=["2"])
    reg.setup(model)
    assert reg.layers == ["0", "4"]
    s = _sq_norms(model)
    assert math.isclose(reg.value().item(), 2 * math.sqrt(s[0] * s[2]), rel_tol=1e-12)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(3, 4, bias=False)
        self.a1, self.a2 = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
        self.b1 = nn.Linear(4, 4, bias=False)
        self.out = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.a2(torch.relu(self.a1(h)))
        h = h + self.b1(h)
        return self.out(h)

    def residual_blocks(self):
        return [["a1", "a2"], ["b1"]]


def test_residual_variant_value_and_within_block_invariance():
    torch.manual_seed(0)
    model = TinyResNet().double()
    reg = InvariantRegularizer(coefficient=2.0, variant="residual")
    reg.setup(model)  # blocks from model.residual_blocks()
    n = {k: getattr(model, k).weight.norm().item() for k in ("a1", "a2", "b1")}
    expect = 2.0 * (1 + n["a1"] * n["a2"]) * (1 + n["b1"])
    assert math.isclose(reg.penalty(model).item(), expect, rel_tol=1e-12)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = model(x)
    with torch.no_grad():
        model.a1.weight.mul_(3.0)
        model.a2.weight.div_(3.0)
    assert torch.allclose(model(x), out)
    assert math.isclose(reg.penalty(model).item(), expect, rel_tol=1e-5)
    explicit = InvariantRegularizer(variant="residual", blocks=[["b1"]])
    explicit.setup(model)
    assert math.isclose(explicit.value().item(), 1 + n["b1"], rel_tol=1e-12)


def test_residual_needs_blocks_and_known_names():
    with pytest.raises(ValueError, match="blocks"):
        InvariantRegularizer(variant="residual").setup(_mlp())
    with pytest.raises(ValueError, match="blocks"):
        InvariantRegularizer(variant="residual", blocks=[["nope"]]).setup(_mlp())
    with pytest.raises(ValueError, match="variant"):
        InvariantRegularizer(variant="tree")
    with pytest.raises(ValueError, match="coefficient"):
        InvariantRegularizer(coefficient=-1.0)
