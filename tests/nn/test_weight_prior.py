"""The proper Gaussian weight prior with the empirical-Bayes variance (model.weight_prior:
gaussian): checked against torch.distributions' closed-form Gaussian KL minimised over the prior
variance by a grid search, not against our own formula."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar
from torch.distributions import Normal, kl_divergence

from bnn_nested.config import ConfigError, build_config
from bnn_nested.models.registry import build_model
from bnn_nested.nn.bayes import gaussian_eb_kl
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.training.samplers import build_sampler


def _reference(theta, log_alpha, keep):
    """min over s of sum_c keep_c sum_w KL(N(theta, alpha theta^2) || N(0, s^2)) (scipy's bounded
    scalar minimiser over log s), and the per-channel KLs at the best s."""
    sigma = theta.abs().double() * torch.exp(0.5 * log_alpha.double())
    q = Normal(theta.double(), sigma)

    def per_channel(log_s: float) -> torch.Tensor:
        p = Normal(torch.zeros_like(q.loc), torch.full_like(q.loc, math.exp(log_s)))
        return kl_divergence(q, p).flatten(1).sum(1)

    best = minimize_scalar(
        lambda ls: float((per_channel(ls) * keep.double()).sum()),
        bounds=(-8.0, 3.0),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return best.fun, per_channel(best.x)


@pytest.mark.parametrize("with_keep", [False, True])
def test_gaussian_eb_kl_is_the_kl_at_the_best_prior_variance(with_keep):
    g = torch.Generator().manual_seed(0)
    theta = 0.3 * torch.randn(6, 5, generator=g)
    log_alpha = -3.0 + 2.0 * torch.randn(6, 5, generator=g)
    keep = torch.rand(6, generator=g) if with_keep else torch.ones(6)
    total, per_channel = _reference(theta, log_alpha, keep)
    ours = gaussian_eb_kl(theta, log_alpha, keep if with_keep else None)
    assert float((ours.double() * keep.double()).sum()) == pytest.approx(total, rel=1e-6)
    torch.testing.assert_close(ours.double(), per_channel, rtol=1e-5, atol=1e-6)


def test_gaussian_eb_kl_is_zero_at_the_prior_and_grows_with_certainty():
    theta = torch.full((4, 3), 0.5)
    # alpha -> inf is the prior N(0, s^2) only in the limit; at log_alpha = 8: theta^2 / sigma^2 ~ 3e-4
    near_prior = gaussian_eb_kl(theta, torch.full((4, 3), 8.0)).sum()
    assert 0.0 <= float(near_prior) < 0.01
    certain = gaussian_eb_kl(theta, torch.full((4, 3), -8.0)).sum()
    # N(theta, e^-8 theta^2) against s^2 = theta^2 (1 + e^-8): 0.5 (8 + log(1 + e^-8)) per weight
    assert float(certain) == pytest.approx(12 * 0.5 * (8.0 + math.log1p(math.exp(-8.0))), rel=1e-4)


def test_weight_prior_comes_from_the_config_and_bad_names_are_refused():
    cfg = build_config(
        {
            "model": {
                "hidden": [16],
                "groups": 4,
                "kept": 1,
                "weight_posterior": "gaussian",
                "weight_prior": "gaussian",
            }
        }
    )
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (8,), 3)
    layers = [m for m in model.modules() if isinstance(m, NestedMixin)]
    assert layers and all(m.weight_prior == "gaussian" for m in layers)
    with pytest.raises(ConfigError, match="weight_prior"):
        build_config({"model": {"weight_prior": "laplace"}})
