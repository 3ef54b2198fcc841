"""FixNorm: initial norms of norm-followed weights, constant classifier norm."""

import pytest
import torch
from torch import nn

from bnn_nested.regularization import FixNorm

from .test_targets import SmallCNN

X = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
TARGETS = ["features.0", "features.3", "head.0"]


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1)


def _train(model, reg, opt, steps=5):
    for step in range(1, steps + 1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        reg.before_step(model, opt)
        opt.step()
        reg.after_step(model, step)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
@pytest.mark.parametrize("granularity", ["filter", "layer"])
def test_keeps_initial_norms_and_classifier_constant(opt_cls, granularity):
    torch.manual_seed(0)
    model = SmallCNN()
    mods = dict(model.named_modules())
    init_rows = {n: _rows(mods[n].weight).detach().clone() for n in TARGETS}
    init_layer = {n: mods[n].weight.norm().item() for n in TARGETS}
    reg = FixNorm(granularity=granularity, classifier_norm=3.0, example_input=X[:2])
    reg.setup(model)
    assert reg.targets == TARGETS and reg.classifier == "head.3"
    assert torch.allclose(_rows(mods["head.3"].weight), torch.full((5,), 3.0), atol=1e-6)
    start = {n: mods[n].weight.detach().clone() for n in TARGETS}
    _train(model, reg, opt_cls(model.parameters(), lr=0.05))
    for n in TARGETS:
        assert not torch.allclose(mods[n].weight, start[n], atol=1e-4), n  # it did train
        if granularity == "filter":
            assert torch.allclose(_rows(mods[n].weight), init_rows[n], atol=1e-6), n
        else:
            assert abs(mods[n].weight.norm().item() - init_layer[n]) < 1e-6, n
    assert torch.allclose(_rows(mods["head.3"].weight), torch.full((5,), 3.0), atol=1e-6)


def test_matrix_classifier_granularity_and_bias_untouched():
    torch.manual_seed(0)
    model = SmallCNN()
    bias = model.head[3].bias.detach().clone()
    reg = FixNorm(classifier_norm=2.5, classifier_granularity="matrix", example_input=X[:2])
    reg.setup(model)
    reg.after_step(model, 1)
    w = model.head[3].weight
    assert abs(w.norm().item() - 2.5) < 1e-6
    assert not torch.allclose(_rows(w), torch.full((5,), 2.5 / 5**0.5), atol=1e-3)
    assert torch.equal(model.head[3].bias, bias)


def test_explicit_classifier_is_removed_from_targets():
    torch.manual_seed(0)
    model = SmallCNN()
    reg = FixNorm(classifier="head.0", other_weight_decay=0.0, example_input=X[:2])
    reg.setup(model)
    assert reg.targets == ["features.0", "features.3"]
    assert torch.allclose(_rows(model.head[0].weight), torch.ones(8), atol=1e-6)
    assert "head.0" not in reg._unregularized()


def test_bad_options_raise():
    with pytest.raises(ValueError, match="classifier_norm"):
        FixNorm(classifier_norm=0.0)
    with pytest.raises(ValueError, match="classifier_granularity"):
        FixNorm(classifier_granularity="rows")
    with pytest.raises(ValueError, match="classifier"):
        FixNorm(classifier="nope", example_input=X[:2]).setup(SmallCNN())
