"""Training estimators of Gaussian weights: the LRT (fused or not) and one shared weight draw per
mini-batch estimate the same pre-activation moments and the same expected gradient."""

import pytest
import torch
import torch.nn.functional as F

from bnn_nested.config import ConfigError, build_config
from bnn_nested.models import build_model
from bnn_nested.nn import NestedConv2d, NestedLinear, set_weight_noise
from bnn_nested.nn.bayes import WEIGHT_NOISE, lrt_conv2d_moments

N_MC = 8_000


@pytest.mark.parametrize(
    "stride,padding,dilation,conv_groups,bias",
    [(1, 1, 1, 1, True), (2, 0, 1, 1, False), (1, 2, 2, 2, True)],
)
def test_fused_lrt_moments_equal_two_convolutions(stride, padding, dilation, conv_groups, bias):
    torch.manual_seed(3)
    x = torch.randn(3, 4, 7, 7, requires_grad=True)
    theta = torch.randn(6, 4 // conv_groups, 3, 3, requires_grad=True)
    log_alpha = (torch.rand(6, 4 // conv_groups, 3, 3) * 4 - 5).requires_grad_()
    b = torch.randn(6, requires_grad=True) if bias else None
    args = (x, theta, log_alpha, b, stride, padding, dilation, conv_groups)
    two = lrt_conv2d_moments(*args)
    one = lrt_conv2d_moments(*args, fused=True)
    # independent check of the variance: conv of x^2 with alpha theta^2, written out here
    w_var = log_alpha.detach().exp() * theta.detach() ** 2
    var = F.conv2d(x.detach() ** 2, w_var, None, stride, padding, dilation, conv_groups)
    for a, c in zip(two, one):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(one[1], var, rtol=1e-5, atol=1e-6)
    leaves = [t for t in (x, theta, log_alpha, b) if t is not None]
    g_two = torch.autograd.grad(two[0].sum() + two[1].square().sum(), leaves)
    g_one = torch.autograd.grad(one[0].sum() + one[1].square().sum(), leaves)
    for a, c in zip(g_two, g_one):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def _gaussian_linear(weight_noise: str) -> NestedLinear:
    torch.manual_seed(5)
    layer = NestedLinear(
        3, 2, weight_posterior="gaussian", init_log_alpha=-1.0, weight_noise=weight_noise
    )
    with torch.no_grad():
        layer.log_alpha.copy_(torch.tensor([[0.0, -1.0, 0.5], [-0.5, 0.2, -2.0]]))
    return layer.train()


def test_shared_noise_moments_match_closed_form_and_examples_are_correlated():
    layer = _gaussian_linear("shared")
    x = torch.tensor([[0.7, -1.2, 0.4], [1.0, 0.5, -0.3]])  # two examples, one batch
    with torch.no_grad():
        out = torch.stack([layer(x) for _ in range(N_MC)])  # (N, 2 examples, 2 outputs)
    theta, alpha, b = layer.weight.detach(), layer.log_alpha.detach().exp(), layer.bias.detach()
    exact_mean = x @ theta.T + b
    exact_var = (x**2) @ (alpha * theta**2).T
    # both examples use the same weights: Cov(out_0k, out_1k) = sum_i x0i x1i alpha_ki theta_ki^2
    exact_cov = (x[0] * x[1]) @ (alpha * theta**2).T
    m, v = out.mean(0), out.var(0)
    assert torch.all((m - exact_mean).abs() < 5 * (exact_var / N_MC).sqrt())  # 5 standard errors
    torch.testing.assert_close(v, exact_var, rtol=0.08, atol=0)  # 5 s.e. of a variance
    c = ((out[:, 0] - m[0]) * (out[:, 1] - m[1])).mean(0)
    torch.testing.assert_close(c, exact_cov, rtol=0.12, atol=0.01)


def test_lrt_examples_are_independent():
    layer = _gaussian_linear("lrt")
    x = torch.tensor([[0.7, -1.2, 0.4], [1.0, 0.5, -0.3]])
    with torch.no_grad():
        out = torch.stack([layer(x) for _ in range(N_MC)])
    m = out.mean(0)
    c = ((out[:, 0] - m[0]) * (out[:, 1] - m[1])).mean(0)
    sd = out.std(0)
    assert torch.all(c.abs() < 5 * sd[0] * sd[1] / N_MC**0.5)  # correlation ~ 0 (5 s.e.)


def test_shared_noise_conv_shares_one_draw_across_locations():
    torch.manual_seed(7)
    conv = NestedConv2d(1, 1, 1, bias=False, weight_posterior="gaussian", init_log_alpha=-1.0)
    set_weight_noise(conv, "shared")
    conv.train()
    x = torch.tensor([[[[1.0, -2.0]]]])  # one channel, two locations, 1x1 kernel
    with torch.no_grad():
        out = torch.stack([conv(x).flatten() for _ in range(5_000)])  # (N, 2)
    # one weight w for both locations: out = (w, -2w), exactly proportional
    torch.testing.assert_close(out[:, 1], -2 * out[:, 0])
    theta, alpha = conv.weight.item(), conv.log_alpha.exp().item()
    assert abs(out[:, 0].var().item() / (alpha * theta**2) - 1) < 0.06  # var within 6 %


@pytest.mark.parametrize("weight_noise", WEIGHT_NOISE)
def test_both_estimators_give_the_expected_gradient(weight_noise):
    """E[d/dtheta sum(out^2)] for out ~ N(mu, s^2) equals d/dtheta sum(mu^2 + s^2) (closed form)."""
    layer = _gaussian_linear(weight_noise)
    x = torch.tensor([[0.7, -1.2, 0.4], [1.0, 0.5, -0.3], [-0.2, 0.9, 1.1]])
    params = [layer.weight, layer.log_alpha]
    n = 1_500
    grads = []
    for _ in range(n):
        g = torch.autograd.grad(layer(x).square().sum(), params)
        grads.append(torch.cat([t.flatten() for t in g]))
    g = torch.stack(grads)
    theta, la = layer.weight, layer.log_alpha
    mean = F.linear(x, theta, layer.bias)
    var = F.linear(x**2, la.exp() * theta**2)
    exact = torch.cat(
        [t.flatten() for t in torch.autograd.grad((mean**2 + var).sum(), params)]
    ).detach()
    se = g.std(0) / n**0.5
    assert torch.all((g.mean(0) - exact).abs() < 5 * se + 1e-6)


def test_weight_noise_only_changes_training():
    lrt, shared = _gaussian_linear("lrt"), _gaussian_linear("shared")
    x = torch.randn(4, 3)
    lrt.eval(), shared.eval()
    torch.testing.assert_close(lrt(x), shared(x))  # mean network
    lrt.stochastic = shared.stochastic = True
    torch.manual_seed(11)
    ya = lrt(x)
    torch.manual_seed(11)
    yb = shared(x)
    torch.testing.assert_close(ya, yb)  # Monte-Carlo prediction: the same whole-weight draws


def test_bad_weight_noise_names_the_field_and_values():
    with pytest.raises(ValueError, match=r"weight_noise must be one of \('lrt', 'shared'\)"):
        NestedLinear(3, 2, weight_posterior="gaussian", weight_noise="flipout")
    with pytest.raises(ValueError, match="weight_noise must be one of"):
        set_weight_noise(NestedLinear(3, 2), "both")
    with pytest.raises((ConfigError, ValueError), match="weight_noise"):
        build_config({"model": {"weight_noise": "flipout"}})


def test_config_weight_noise_reaches_every_layer():
    cfg = build_config(
        {
            "model": {
                "name": "lenet",
                "hidden": [4, 8, 16],
                "groups": 4,
                "kept": 1,
                "weight_posterior": "gaussian",
                "weight_noise": "shared",
            }
        }
    )
    model = build_model(cfg.model, {}, (1, 8, 8), 3)
    layers = [m for m in model.modules() if isinstance(m, (NestedLinear, NestedConv2d))]
    assert layers and all(m.weight_noise == "shared" for m in layers)
    default = build_config({"model": {"name": "lenet", "hidden": [4, 8, 16], "groups": 4}})
    assert default.model.weight_noise == "lrt"
