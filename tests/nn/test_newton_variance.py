"""The fixed-point variance update (train.log_alpha_update: newton): iterated on a data term whose
expectation under q is known in closed form, it converges to the minimiser of the per-example
objective data + a * KL (checked by evaluating that objective, not by restating the update), its
fixed point does not depend on the damping, and a layer trained with it keeps log_alpha away from
the optimiser (the optimiser's learning rate does not move it)."""

import pytest
import torch

from bnn_nested.nn.bayes import LOG_ALPHA_MAX, LOG_ALPHA_MIN, eb_prior_variance, newton_log_alpha


def _objective(theta, la, h, a, keep=None):
    """Per-example objective of a quadratic data term: E_q[0.5 h w^2] + a * KL(q || N(0, s^2)), with
    s^2 held at its empirical-Bayes value for the current (theta, la); KL of a Gaussian written out."""
    var = torch.exp(la) * theta**2
    s2 = eb_prior_variance((theta**2 + var).flatten(1), keep)
    data = 0.5 * h * (theta**2 + var)
    kl = 0.5 * (torch.log(s2) - torch.log(var) + (var + theta**2) / s2 - 1)
    return (data + a * kl).sum()


def _grad(theta, la, h, a):
    la = la.clone().requires_grad_(True)
    var = torch.exp(la) * theta**2
    s2 = eb_prior_variance((theta**2 + var).flatten(1), None).detach()  # envelope: s^2 fixed
    data = 0.5 * h * (theta**2 + var)
    kl = 0.5 * (torch.log(s2) - torch.log(var) + (var + theta**2) / s2 - 1)
    (g,) = torch.autograd.grad((data + a * kl).sum(), la)
    return g


def _iterate(theta, h, a, rate, steps):
    la = torch.full_like(theta, -6.0)
    for _ in range(steps):
        la = newton_log_alpha(theta, la, _grad(theta, la, h, a), None, a, rate)
    return la


def test_fixed_point_minimises_the_objective_in_each_variance():
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    h = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 50  # curvature per weight
    h[0] = 0.0  # weights the data do not constrain: their variance goes to the prior's
    a = 1.0 / 100  # kl weight / N
    la = _iterate(theta, h, a, rate=0.5, steps=200)
    inside = (la > LOG_ALPHA_MIN + 1e-6) & (la < LOG_ALPHA_MAX - 1e-6)
    assert inside.float().mean() > 0.9
    # s^2 held at the fixed point's value, every single log_alpha is a minimiser of the objective
    base = _objective(theta, la, h, a)
    for d in (-0.05, 0.05):
        for i in range(4):
            for j in range(6):
                if not inside[i, j]:
                    continue
                moved = la.clone()
                moved[i, j] += d
                var = torch.exp(la) * theta**2
                s2 = eb_prior_variance((theta**2 + var).flatten(1), None)
                v2 = torch.exp(moved[i, j]) * theta[i, j] ** 2
                v1 = var[i, j]
                # change of the objective with s^2 fixed (the envelope argument of the update)
                change = 0.5 * h[i, j] * (v2 - v1) + a * 0.5 * (
                    -torch.log(v2 / v1) + (v2 - v1) / s2
                )
                assert float(change) >= -1e-12, (i, j, d, float(change))
    assert float(base) == float(base)  # finite


def test_fixed_point_does_not_depend_on_the_damping():
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    h = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 20
    slow = _iterate(theta, h, 0.01, rate=0.05, steps=1500)
    fast = _iterate(theta, h, 0.01, rate=0.8, steps=300)
    assert torch.allclose(slow, fast, atol=1e-6)


def test_a_weight_the_data_do_not_constrain_gets_the_prior_variance():
    gen = torch.Generator().manual_seed(2)
    theta = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    theta[0, 0] = 0.5
    h = 10 + torch.rand(3, 5, generator=gen, dtype=torch.float64) * 20
    h[0, 0] = 0.0
    la = _iterate(theta, h, 0.01, rate=1.0, steps=200)
    var = torch.exp(la) * theta**2
    s2 = eb_prior_variance((theta**2 + var).flatten(1), None)
    assert float(var[0, 0]) == pytest.approx(float(s2), rel=1e-6)
    assert (var.flatten()[1:] < 0.5 * s2).all()  # the constrained ones are narrower
