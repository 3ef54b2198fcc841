"""Detection of norm-followed weights and of the classifier (targets.py)."""

import pytest
import torch
from torch import nn

from bnn_nested.regularization.targets import (
    decay_parameters,
    find_classifier,
    find_norm_followed,
    rescale_,
)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU x2, a conv without BN, then Linear-BN-ReLU-Linear head (4x4 images)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1, bias=False),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 6, 1),  # no norm after it
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class ResNetish(nn.Module):
    """A BN residual block with a conv shortcut, then a block summed *before* its norm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.short = nn.Conv2d(4, 8, 1, bias=False)
        self.short_bn = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(
            8, 8, 3, padding=1, bias=False
        )  # x + conv3(x) -> norm: not invariant
        self.post = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.stem_bn(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(y)) + self.short_bn(self.short(x)))
        x = torch.relu(self.post(x + self.conv3(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Sliced(nn.Module):
    """Dynamic forward: conv output sliced by a width before BN / LayerNorm (no fx tracing)."""

    def __init__(self, width: float = 0.5) -> None:
        super().__init__()
        self.width = width
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.lin = nn.Linear(4, 6)
        self.ln = nn.LayerNorm(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x):
        c = max(1, int(8 * self.width))
        h = self.conv(x)[:, :c]
        h = nn.functional.batch_norm(
            h, self.bn.running_mean[:c], self.bn.running_var[:c], training=self.training
        )  # functional: not a module, so conv is NOT detected through it
        h = h.mean(dim=(2, 3))[:, :4]
        h = self.ln(self.lin(h).view(h.shape[0], 6) * 2.0)  # view and scalar mul are transparent
        return self.out(h)


class SlicedBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x)[:, :4].contiguous())


X = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def test_small_cnn_finds_exactly_conv_bn_and_linear_bn():
    torch.manual_seed(0)
    model = SmallCNN()
    assert find_norm_followed(model, X) == ["features.0", "features.3", "head.0"]
    assert find_classifier(model) == "head.3"


def test_skip_connection_model():
    torch.manual_seed(0)
    model = ResNetish()
    assert find_norm_followed(model, X) == ["stem", "conv1", "conv2", "short"]


def test_dynamic_slicing_view_and_scalar_mul_are_followed():
    torch.manual_seed(0)
    assert find_norm_followed(Sliced(), X) == ["lin"]
    assert find_norm_followed(SlicedBN(), X) == ["conv"]


def test_tracing_has_no_side_effects():
    torch.manual_seed(0)
    model = SmallCNN().train()
    model.features[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    find_norm_followed(model, X * 10 + 3)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training and model.head.training and not model.features[1].training


def test_include_exclude_patterns():
    torch.manual_seed(0)
    model = SmallCNN()
    assert find_norm_followed(model, X, exclude=["features.*"]) == ["head.0"]
    assert find_norm_followed(model, X, include=["head.3"], exclude=["features.0"]) == [
        "features.3",
        "head.0",
        "head.3",
    ]
    assert find_norm_followed(model, include=["features.[03]"]) == ["features.0", "features.3"]
    with pytest.raises(ValueError, match="exclude"):
        find_norm_followed(model, X, exclude=["nothing*"])
    with pytest.raises(ValueError, match="example_input"):
        find_norm_followed(model)


def test_model_hook_overrides_tracing():
    torch.manual_seed(0)
    model = SmallCNN()
    model.norm_followed_weights = lambda: ["head.3"]
    assert find_norm_followed(model, X) == ["head.3"]
    assert find_norm_followed(model, X, include=["features.6"]) == ["features.6", "head.3"]
    model.norm_followed_weights = lambda: ["head.1"]  # a BN, not a weight layer
    with pytest.raises(ValueError, match="norm_followed_weights"):
        find_norm_followed(model, X)


def test_find_classifier_needs_linear():
    with pytest.raises(ValueError, match="classifier"):
        find_classifier(nn.Sequential(nn.Conv2d(1, 1, 1)))


def test_rescale_filter_and_layer_hand_case():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    rescale_(w, 1.0, "filter")
    assert torch.allclose(w, torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    rescale_(w, torch.tensor(10.0), "layer")
    assert torch.allclose(w, torch.tensor([[6.0, 8.0], [0.0, 0.0]]))
    w = torch.zeros(2, 3)
    rescale_(w, 1.0, "filter")  # an all-zero filter stays zero
    assert torch.equal(w, torch.zeros(2, 3))
    wt = torch.ones(2, 3, 1, 1)  # ConvTranspose layout (in, out, ...): filters along dim 1
    rescale_(wt, 1.0, "filter", dim=1)
    assert torch.allclose(wt.transpose(0, 1).reshape(3, -1).norm(dim=1), torch.ones(3))


class OrderingUnit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.r = nn.Parameter(torch.full((3,), 3.0))


class GaussLinear(nn.Linear):
    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.log_alpha = nn.Parameter(torch.full((o, i), -4.0))


def test_decay_parameters_never_log_alpha_or_ordering():
    model = nn.Sequential(GaussLinear(3, 4), nn.BatchNorm1d(4), OrderingUnit(), nn.Linear(4, 2))
    assert sorted(decay_parameters(model)) == ["0.weight", "3.weight"]
    assert sorted(decay_parameters(model, exclude_bias_and_norm=False)) == [
        "0.bias",
        "0.weight",
        "1.bias",
        "1.weight",
        "3.bias",
        "3.weight",
    ]
    assert sorted(decay_parameters(model, exclude=["3"])) == ["0.weight"]
