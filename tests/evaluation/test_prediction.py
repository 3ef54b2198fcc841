"""Monte-Carlo prediction: shapes, determinism, sampling against a by-hand Monte Carlo, chunking,
keep-probability scaling."""

import pytest
import torch

from bnn_nested.evaluation.prediction import predict
from tests.zoo import mlp, zoo


def _lenet(weight_posterior):
    return zoo(
        "lenet",
        (1, 8, 8),
        4,
        hidden=[4, 8, 16],
        groups=4,
        kept=1,
        weight_posterior=weight_posterior,
        init_log_alpha=-1.0,
    ).eval()


def test_shape_and_single_sample_is_deterministic_mean_network():
    model = _lenet("gaussian")
    x = torch.randn(5, 1, 8, 8)
    p = predict(model, x, width=0.5)
    assert p.shape == (1, 5, 4)
    torch.testing.assert_close(p.sum(-1), torch.ones(1, 5))
    torch.testing.assert_close(predict(model, x, width=0.5), p)
    torch.testing.assert_close(p[0], torch.softmax(model(x, width=0.5), -1))


def _gaussian_mlp(init_log_alpha=-1.0):
    model = mlp(
        3,
        2,
        hidden=[4],
        groups=4,
        kept=1,
        weight_posterior="gaussian",
        init_log_alpha=init_log_alpha,
    ).eval()
    with torch.no_grad():  # larger weights: outputs far from uniform, a visible predictive spread
        model.net.features[0].weight.mul_(4.0)
        model.net.classifier.weight.mul_(4.0)
    return model


def _mlp_draws_by_hand(model, x, samples, kept):
    """Independent Monte Carlo: ``samples`` networks with ``w = theta + sqrt(alpha) |theta| eps``
    (``q(w) = N(theta, alpha theta^2)``), using the first ``kept`` hidden units: ``(S, B, C)``."""
    lin1, lin2 = model.net.features[0], model.net.classifier
    g = torch.Generator().manual_seed(1234)

    def draw(layer, rows, cols):
        theta = layer.weight[rows, cols]
        sd = layer.log_alpha[rows, cols].exp().sqrt() * theta.abs()
        return theta + sd * torch.randn((samples,) + theta.shape, generator=g)

    with torch.no_grad():
        w1 = draw(lin1, slice(0, kept), slice(None))  # (S, kept, 3)
        w2 = draw(lin2, slice(None), slice(0, kept))  # (S, 2, kept)
        h = torch.relu(torch.einsum("bi,shi->sbh", x, w1) + lin1.bias[:kept])
        return torch.softmax(torch.einsum("sbh,sch->sbc", h, w2) + lin2.bias, -1)


def test_mc_samples_are_networks_drawn_from_the_weight_posterior():
    """The S samples have the predictive distribution of S weight draws from q(W), computed by
    hand (mean and spread within Monte-Carlo tolerance), and differ from one another."""
    model = _gaussian_mlp()
    x = torch.randn(3, 3)
    S = 4000
    p = predict(model, x, width=0.5, samples=S)  # width 0.5: 1 + ceil(0.5 * 3) = 3 of 4 units
    assert p.shape == (S, 3, 2)
    assert not torch.allclose(p[0], p[1])
    ref = _mlp_draws_by_hand(model, x, S, kept=3)
    # probabilities in [0, 1]: each mean has standard error <= 0.5 / sqrt(4000) = 0.008; the
    # difference of two independent means <= 0.011; 0.04 is ~4 standard errors
    torch.testing.assert_close(p.mean(0), ref.mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(p.std(0), ref.std(0), atol=0.04, rtol=0)
    assert ref.std(0).min() > 0.05  # the noise is large enough for the spread check to mean much
    assert not model.training  # left in eval


def test_small_weight_noise_averages_to_the_mean_network():
    model = _gaussian_mlp(init_log_alpha=-8.0)  # sd = e^-4 |theta|: samples near the mean network
    x = torch.randn(3, 3)
    p = predict(model, x, samples=64)
    with torch.no_grad():
        mean_net = torch.softmax(model.net.classifier(torch.relu(model.net.features[0](x))), -1)
    torch.testing.assert_close(p.mean(0), mean_net, atol=5e-3, rtol=0)
    assert not torch.equal(p[0], p[1])  # but still sampled


def test_point_weights_give_equal_samples():
    point = _lenet("point")
    x = torch.randn(3, 1, 8, 8)
    q = predict(point, x, samples=4)
    torch.testing.assert_close(q, q[:1].expand(4, 3, 4))
    torch.testing.assert_close(q[0], torch.softmax(point(x), -1))


@pytest.mark.parametrize("chunk", [1, 2, 4, 6, None])
def test_each_sample_is_one_network_for_the_whole_batch_at_any_chunking(chunk):
    """Sample-major layout: with B copies of one input, every sample's B rows are equal (one weight
    draw per sample), and the samples differ (a batch-major mix-up would break both)."""
    model = _lenet("gaussian")
    x = torch.randn(1, 1, 8, 8).expand(3, 1, 8, 8)
    p = predict(model, x, samples=6, chunk=chunk)
    assert p.shape == (6, 3, 4)
    torch.testing.assert_close(p[:, 1:], p[:, :1].expand(6, 2, 4))
    assert all(not torch.allclose(p[i, 0], p[j, 0]) for i in range(6) for j in range(i))


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_chunking_gives_the_same_distribution(chunk):
    """Every chunking (one sample per pass, uneven chunks, all at once) matches the by-hand Monte
    Carlo (tolerance as in the test above), and point weights give identical values."""
    point = _lenet("point")
    xp = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(
        predict(point, xp, samples=5, chunk=chunk), predict(point, xp, samples=5, chunk=2)
    )
    model = _gaussian_mlp()
    x = torch.randn(3, 3)
    S = 4000
    p = predict(model, x, samples=S, chunk=chunk)
    ref = _mlp_draws_by_hand(model, x, S, kept=4)
    torch.testing.assert_close(p.mean(0), ref.mean(0), atol=0.04, rtol=0)
    torch.testing.assert_close(p.std(0), ref.std(0), atol=0.04, rtol=0)


def test_keep_scaling_multiplies_by_keep_probabilities():
    model = mlp(3, 2, hidden=[4], groups=4, kept=1).eval()
    unit = model.unit("features.0")
    with torch.no_grad():
        unit.r.copy_(torch.tensor([2.0, 0.0, -1.0]))
    x = torch.randn(2, 3)
    h = torch.relu(model.net.features[0](x)) * unit.channel_keep_probs()
    expect = torch.softmax(model.net.classifier(h), -1)
    torch.testing.assert_close(predict(model, x, keep_scaling=True)[0], expect)
    assert not unit.keep_scaling  # restored
    assert not torch.allclose(predict(model, x)[0], expect)
