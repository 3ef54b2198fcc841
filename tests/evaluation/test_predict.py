"""Monte-Carlo prediction: shapes, determinism, sampling, chunking, keep-probability scaling."""

import torch

from bnn_nested.evaluation.predict import predict
from bnn_nested.models import NestedLeNet, NestedMLP


def _lenet(weight_posterior):
    return NestedLeNet(
        (1, 8, 8),
        4,
        (4, 8, 16),
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


def test_mc_samples_differ_with_gaussian_weights_and_average_near_mean():
    model = _lenet("gaussian")
    x = torch.randn(3, 1, 8, 8)
    p = predict(model, x, width=1.0, samples=6)
    assert p.shape == (6, 3, 4)
    assert not torch.allclose(p[0], p[1])
    point = _lenet("point")
    q = predict(point, x, samples=4)
    torch.testing.assert_close(q, q[:1].expand(4, 3, 4))  # point weights: every sample equal
    assert not model.training  # left in eval


def test_chunking_equals_no_chunking():
    point = _lenet("point")
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(predict(point, x, samples=5, chunk=2), predict(point, x, samples=5))
    model = _lenet("gaussian")
    torch.manual_seed(3)
    a = predict(model, x, samples=4, chunk=4)
    torch.manual_seed(3)
    b = predict(model, x, samples=4, chunk=None)  # None == one chunk of 4: same draws
    torch.testing.assert_close(a, b)
    torch.manual_seed(3)
    c = predict(model, x, samples=400, chunk=100)
    torch.manual_seed(4)
    d = predict(model, x, samples=400)  # default: one sample per forward pass
    torch.testing.assert_close(c.mean(0), d.mean(0), atol=0.03, rtol=0)  # same distribution


def test_keep_scaling_multiplies_by_keep_probabilities():
    model = NestedMLP(3, 2, hidden=[4], groups=4, kept=1).eval()
    unit = model.features[model.pairs[0][1]]
    with torch.no_grad():
        unit.r.copy_(torch.tensor([2.0, 0.0, -1.0]))
    x = torch.randn(2, 3)
    h = torch.relu(model.features[0](x)) * unit.channel_keep_probs()
    expect = torch.softmax(model.classifier(h), -1)
    torch.testing.assert_close(predict(model, x, keep_scaling=True)[0], expect)
    assert not unit.keep_scaling  # restored
    assert not torch.allclose(predict(model, x)[0], expect)
