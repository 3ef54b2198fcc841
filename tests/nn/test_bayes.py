"""Gaussian (multiplicative-noise) weights: LRT moments, sparse-VD KL, keep-probability weighting."""

import math

import pytest
import torch
import torch.nn.functional as F

from bnn_nested.nn import NestedConv2d, NestedLinear, sparse_vd_kl
from bnn_nested.nn.bayes import MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3

N_MC = 40_000


def _moments(samples):
    return samples.mean(0), samples.var(0)


def test_lrt_linear_matches_direct_weight_sampling():
    torch.manual_seed(1)
    layer = NestedLinear(3, 2, weight_posterior="gaussian", init_log_alpha=0.0).train()
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([[0.0, -1.0, 0.5], [-0.5, 0.2, 0.0]]))
    x = torch.tensor([[0.7, -1.2, 0.4]])
    lrt = layer(x.expand(N_MC, 3))  # (N, 2): one LRT draw per row
    theta, alpha = layer.weight.detach(), layer.log_alpha.detach().exp()
    w = theta + alpha.sqrt() * theta.abs() * torch.randn(N_MC, 2, 3)  # w ~ N(theta, alpha theta^2)
    direct = torch.einsum("noi,i->no", w, x[0]) + layer.bias.detach()
    exact_mean = x[0] @ theta.T + layer.bias.detach()
    exact_var = (x[0] ** 2) @ (alpha * theta**2).T
    for s in (lrt.detach(), direct):
        m, v = _moments(s)
        # standard error of the mean is sqrt(v / N); 5 of them; sample variance within 4 %
        assert torch.all((m - exact_mean).abs() < 5 * (exact_var / N_MC).sqrt())
        torch.testing.assert_close(v, exact_var, rtol=0.04, atol=0)


def test_lrt_conv_matches_direct_weight_sampling():
    torch.manual_seed(2)
    conv = NestedConv2d(2, 2, 3, padding=1, weight_posterior="gaussian", init_log_alpha=-0.5)
    with torch.no_grad():
        conv.log_alpha.uniform_(-1.5, 0.5)  # a different noise ratio per weight
    x = torch.randn(1, 2, 3, 3)
    lrt = conv.train()(x.expand(N_MC, 2, 3, 3)).detach()  # (N, 2, 3, 3)
    theta = conv.weight.detach()
    alpha = conv.log_alpha.detach().exp()
    patches = F.unfold(x, 3, padding=1)[0]  # (2*9, L)
    w = theta + alpha.sqrt() * theta.abs() * torch.randn((N_MC,) + theta.shape)
    direct = (w.flatten(2) @ patches).view(N_MC, 2, 3, 3) + conv.bias.detach()[:, None, None]
    m1, v1 = _moments(lrt)
    m2, v2 = _moments(direct)
    se = (v2 / N_MC).sqrt()
    assert torch.all((m1 - m2).abs() < 6 * se)
    torch.testing.assert_close(v1, v2, rtol=0.06, atol=1e-6)


def test_eval_uses_mean_weights_and_stochastic_mode_samples():
    layer = NestedLinear(4, 3, weight_posterior="gaussian", init_log_alpha=0.0).eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    layer.stochastic = True
    assert not torch.allclose(layer(x), layer(x))


def test_sparse_vd_kl_formula_and_shape_against_exact_kl_differences():
    la = torch.tensor([0.0])
    expect = MOLCHANOV_K1 - MOLCHANOV_K1 / (1 + math.exp(-MOLCHANOV_K2)) + 0.5 * math.log(2)
    assert math.isclose(float(sparse_vd_kl(la)), expect, rel_tol=1e-6)
    sig = 1 / (1 + math.exp(-(MOLCHANOV_K2 + MOLCHANOV_K3 * 1.0)))
    expect1 = MOLCHANOV_K1 - MOLCHANOV_K1 * sig + 0.5 * math.log1p(math.exp(-1.0))
    assert math.isclose(float(sparse_vd_kl(torch.tensor(1.0))), expect1, rel_tol=1e-6)
    # -KL = 0.5 log(alpha) - E_{e ~ N(1, alpha)} log|e| + C (Molchanov et al. 2017 eq. 13): check
    # the approximation's differences across alpha by Monte Carlo (1e6 draws, s.e. ~ 2e-3).
    torch.manual_seed(0)
    z = torch.randn(1_000_000, dtype=torch.float64)

    def neg_kl_mc(log_alpha):
        a = math.exp(log_alpha)
        return 0.5 * log_alpha - torch.log((1 + math.sqrt(a) * z).abs()).mean().item()

    for lo, hi in ((-2.0, 2.0), (-4.0, 0.0)):
        approx = float(sparse_vd_kl(torch.tensor(lo)) - sparse_vd_kl(torch.tensor(hi)))
        assert abs(approx - (neg_kl_mc(hi) - neg_kl_mc(lo))) < 0.02


def test_weight_kl_is_weighted_per_output_channel_by_keep_probability():
    layer = NestedConv2d(2, 4, 3, weight_posterior="gaussian", init_log_alpha=-3.0)
    with torch.no_grad():
        layer.log_alpha.add_(torch.randn_like(layer.log_alpha))
    per_channel = sparse_vd_kl(layer.log_alpha).sum((1, 2, 3))
    keep = torch.tensor([1.0, 0.5, 0.25, 0.0])
    torch.testing.assert_close(layer.weight_kl(keep), (per_channel * keep).sum())
    torch.testing.assert_close(layer.weight_kl(None), per_channel.sum())
    zero_last = layer.weight_kl(torch.tensor([1.0, 1.0, 1.0, 0.0]))
    torch.testing.assert_close(zero_last, per_channel[:3].sum())  # dropped channel costs nothing
    assert float(NestedLinear(3, 2).weight_kl(torch.ones(2))) == 0.0  # point weights
    with pytest.raises(ValueError, match="channel_keep"):
        layer.weight_kl(torch.ones(3))
    with pytest.raises(ValueError, match="weight_posterior must be one of"):
        NestedLinear(3, 2, weight_posterior="laplace")
