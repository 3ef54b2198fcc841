"""Monte-Carlo prediction draws whole weight tensors from q(W) (issue 14, item 4).

Local reparameterisation draws independent noise per output element: fine for the training
gradient, but ``predict(samples=S)`` then does not sample networks from q(W) (e.g. the variance of a
globally pooled output is wrong, and two identical inputs in one sample disagree). The first two
tests failed on the LRT prediction it replaced; the third checks the moments of the new path."""

import torch
from torch import nn

from bnn_nested.evaluation.prediction import predict
from bnn_nested.nest import nestify
from bnn_nested.nn import NestedConv2d, NestedLinear
from tests.zoo import zoo


class _Pool(nn.Module):
    """One 3x3 conv (1 -> 1 channel, no padding) and a global average: the output is
    ``sum_ij w_ij * mean(patch_ij)``, so its variance under a Gaussian q(W) has a closed form."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.linspace(-1.0, 1.0, 9).view(1, 1, 3, 3))

    def forward(self, x):
        return torch.stack([self.conv(x).mean((1, 2, 3)), torch.zeros(len(x))], -1)


def test_globally_pooled_output_has_the_variance_of_real_weight_samples():
    """Var of the pooled output over S = 4000 samples == ``sum_ij alpha theta_ij^2 mean_ij^2``
    (closed form for a weight-space Gaussian), within 10% (seeded; the LRT's was 10x off)."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 12, 12)
    model = nestify(_Pool(), x, exclude=["conv"], weight_posterior="gaussian", init_log_alpha=0.0)
    model.eval()
    patches = nn.functional.unfold(x, 3).mean(-1).view(9)  # mean input under each weight
    want = (model.net.conv.weight.view(9) ** 2 * patches**2).sum().item()  # alpha = 1
    probs = predict(model, x, samples=4000)
    z = torch.log(probs[..., 0] / probs[..., 1]).view(-1)  # the logit difference = pooled output
    assert abs(z.var().item() / want - 1) < 0.1, (z.var().item(), want)


def test_one_weight_sample_is_shared_by_the_batch_and_every_location():
    model = zoo(
        "lenet",
        (1, 8, 8),
        4,
        hidden=[4, 8, 16],
        groups=4,
        kept=1,
        weight_posterior="gaussian",
        init_log_alpha=-1.0,
    ).eval()
    x = torch.randn(1, 1, 8, 8).expand(3, 1, 8, 8)  # the same input three times
    p = predict(model, x, samples=5)
    torch.testing.assert_close(p[:, 0], p[:, 1])
    torch.testing.assert_close(p[:, 0], p[:, 2])
    assert not torch.allclose(p[0], p[1])  # different samples differ
    conv = NestedConv2d(1, 2, 3, padding=1, weight_posterior="gaussian", init_log_alpha=0.0)
    conv.eval()
    conv.stochastic = True
    out = conv(torch.ones(1, 1, 6, 6))[0, :, 1:-1, 1:-1]  # interior: the same window everywhere
    torch.testing.assert_close(out, out[:, :1, :1].expand_as(out))


def test_linear_weight_samples_match_the_posterior_moments():
    """Per-sample weights of a Gaussian linear layer: output mean and variance per input match
    ``x theta`` and ``x^2 alpha theta^2`` within 5 standard errors (S = 20000, seeded)."""
    torch.manual_seed(1)
    lin = NestedLinear(3, 1, bias=False, weight_posterior="gaussian")
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        lin.log_alpha.copy_(torch.tensor([[-1.0, 0.0, -2.0]]))
    lin.eval()
    lin.stochastic = True
    S, x = 20000, torch.tensor([[1.0, 2.0, -1.0]])
    lin.mc_samples = S
    out = lin(x.expand(S, 3)).view(S)  # sample-major: row s uses weight sample s
    mean = (x * lin.weight).sum().item()
    var = (x**2 * lin.log_alpha.exp() * lin.weight**2).sum().item()
    assert abs(out.mean().item() - mean) < 5 * (var / S) ** 0.5
    assert abs(out.var().item() / var - 1) < 5 * (2 / S) ** 0.5
