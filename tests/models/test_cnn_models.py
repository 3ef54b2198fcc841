"""LeNet / VGG / ResNet: shapes at several widths, slicing == zeroing in eval, registry, hooks."""

from types import SimpleNamespace

import pytest
import torch

from bnn_nested.models import NestedLeNet, NestedResNet, NestedVGG, build_model
from bnn_nested.models.resnet import add_at_width
from bnn_nested.nn import calibrate_bn
from tests.nn.test_nested import _zeroing_hooks

pytestmark = pytest.mark.filterwarnings("ignore::bnn_nested.nn.batchnorm.UncalibratedWidthWarning")

SMALL_VGG = [8, "M", 16, "M", 16]


def _cfg(**kw):
    base = dict(
        name="lenet",
        variant=None,
        hidden=[8, 16, 32],
        groups=4,
        frozen=1,
        weights="point",
        norm="batch",
        dropout=0.0,
        order_first=False,
        order_classifier_input=True,
        init_log_alpha=-8.0,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _models():
    return {
        "lenet28": NestedLeNet((1, 28, 28), 10, (8, 16, 32), groups=4, frozen=1, norm="batch"),
        "lenet8": NestedLeNet((64,), 10, (8, 16, 32), groups=4, frozen=1, weights="gaussian"),
        "vgg": NestedVGG(SMALL_VGG, (3, 8, 8), 5, groups=4, frozen=1, weights="gaussian"),
        "resnet": NestedResNet("20", (3, 8, 8), 5, groups=4, frozen=1),
    }


def _warm_bn(model, shape):
    model.train()
    with model.masking(False):
        for _ in range(2):
            model(torch.randn((6,) + shape))
    return model.eval()


@pytest.mark.parametrize("name", ["lenet28", "lenet8", "vgg", "resnet"])
def test_shapes_and_sliced_equals_zeroed_in_eval(name):
    model = _models()[name]
    shape = model.input_chw if name != "lenet8" else (64,)
    _warm_bn(model, shape)
    x = torch.randn((3,) + shape)
    for width in (0.25, 0.5, 1.0):
        sliced = model(x, width=width)
        assert sliced.shape == (3, model.classifier.out_features)
        hooks = _zeroing_hooks(model, width)
        zeroed = model(x)
        for h in hooks:
            h.remove()
        torch.testing.assert_close(sliced, zeroed, atol=1e-5, rtol=1e-4)


def test_first_layer_and_classifier_not_ordered_by_default():
    m = NestedVGG(SMALL_VGG, (3, 8, 8), 5, groups=4, frozen=1)
    blocks = m.blocks()
    assert blocks[0].ou is None and not blocks[0].conv.ordered
    assert all(b.ou is not None for b in blocks[1:]) and not m.classifier.ordered
    m2 = NestedVGG(
        SMALL_VGG, (3, 8, 8), 5, groups=4, frozen=1, order_first=True, order_classifier_input=False
    )
    assert m2.blocks()[0].ou is not None and m2.blocks()[-1].ou is None
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, frozen=1, order_classifier_input=False)
    assert r.blocks[-1].ou is None
    assert r(torch.randn(2, 3, 8, 8), width=0.25).shape == (2, 5)


def test_residual_addition_slices_and_pads_the_shortcut():
    main, sc = torch.ones(2, 3, 2, 2), torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 2, 2)
    out = add_at_width(main, sc)
    assert out.shape == (2, 3, 2, 2) and torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 2, 3]))
    out = add_at_width(torch.ones(1, 4, 1, 1), torch.ones(1, 2, 1, 1))
    assert out.flatten().tolist() == [2.0, 2.0, 1.0, 1.0]


def test_model_hooks_name_real_modules():
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, frozen=1)
    names = dict(r.named_modules())
    assert len(r.residual_blocks()) == 9
    assert all(n in names for b in r.residual_blocks() for n in b)
    assert all(n in names for n in r.norm_followed_weights())
    assert "blocks.3.shortcut_conv" in r.norm_followed_weights()
    v = NestedVGG("11", (3, 32, 32), 10, groups=32, frozen=2)
    assert len(v.norm_followed_weights()) == 8
    lenet = NestedLeNet((1, 28, 28), 10, (8, 16, 32), groups=4, norm="batch")
    assert lenet.norm_followed_weights() == ["conv1.conv", "conv2.conv", "fc"]
    for m in (r, v, lenet):
        layers = [layer for layer, _ in m.weight_kl_pairs()]
        assert m.classifier in layers


def test_vgg11_wide_channels_and_resnet18_builds():
    v = NestedVGG("11-wide", (3, 32, 32), 10, groups=32, frozen=2)
    assert [b.conv.out_channels for b in v.blocks()] == [96, 192, 384, 384, 768, 768, 768, 768]
    r = NestedResNet("18", (3, 32, 32), 10, groups=32, frozen=2)
    assert r.classifier.in_features == 512 and len(r.blocks) == 8


def test_registry_builds_by_name_and_lists_known_names():
    m = build_model(_cfg(), {}, (1, 28, 28), 10)
    assert isinstance(m, NestedLeNet)
    assert isinstance(build_model(_cfg(name="vgg", variant="11"), {}, (3, 32, 32), 10), NestedVGG)
    assert isinstance(
        build_model(_cfg(name="resnet", variant="20"), {}, (3, 8, 8), 10), NestedResNet
    )
    with pytest.raises(ValueError, match="known models: .*lenet.*mlp.*resnet.*vgg"):
        build_model(_cfg(name="alexnet"), {}, (1, 28, 28), 10)
    with pytest.raises(ValueError, match="variant must be one of"):
        build_model(_cfg(name="vgg", variant="13"), {}, (3, 32, 32), 10)
    with pytest.raises(ValueError, match="model.hidden: lenet"):
        build_model(_cfg(hidden=[256, 256]), {}, (1, 28, 28), 10)


def test_calibrate_bn_on_resnet_and_gaussian_kl_finite():
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, frozen=1, weights="gaussian")
    data = [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(2)]
    calibrate_bn(r, data, widths=[0.25, 1.0], num_batches=2)
    assert r.blocks[0].bn2.calibrated_channels() == [8, 16]
    assert torch.isfinite(r.kl()) and r.kl() > 0
