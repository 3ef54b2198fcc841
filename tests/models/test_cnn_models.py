"""LeNet / VGG / ResNet: shapes at several widths, slicing == zeroing in eval, registry, hooks."""

import pytest
import torch

from bnn_nested.config import ModelConfig
from bnn_nested.models import VGG, LeNet, NestedLeNet, NestedResNet, NestedVGG, ResNet, build_model
from bnn_nested.models.resnet import add_at_width
from bnn_nested.nest import NestifiedModel
from bnn_nested.nn import recalibrate_bn
from tests.nn.test_nested import _zeroing_hooks

pytestmark = pytest.mark.filterwarnings("ignore::bnn_nested.nn.batchnorm.UncalibratedWidthWarning")

SMALL_VGG = [8, "M", 16, "M", 16]


def _cfg(**kw):
    base = dict(
        name="lenet",
        variant=None,
        hidden=[8, 16, 32],
        groups=4,
        kept=1,
        weight_posterior="point",
        norm="batch",
        dropout=0.0,
        order_first=False,
        order_classifier_input=True,
        init_log_alpha=-8.0,
    )
    base.update(kw)
    return ModelConfig(**base)


def _models():
    return {
        "lenet28": NestedLeNet((1, 28, 28), 10, (8, 16, 32), groups=4, kept=1, norm="batch"),
        "lenet8": NestedLeNet(
            (64,), 10, (8, 16, 32), groups=4, kept=1, weight_posterior="gaussian"
        ),
        "vgg": NestedVGG(SMALL_VGG, (3, 8, 8), 5, groups=4, kept=1, weight_posterior="gaussian"),
        "resnet": NestedResNet("20", (3, 8, 8), 5, groups=4, kept=1),
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
    m = NestedVGG(SMALL_VGG, (3, 8, 8), 5, groups=4, kept=1)
    blocks = m.blocks()
    assert blocks[0].ou is None and not blocks[0].conv.ordered
    assert all(b.ou is not None for b in blocks[1:]) and not m.classifier.ordered
    m2 = NestedVGG(
        SMALL_VGG, (3, 8, 8), 5, groups=4, kept=1, order_first=True, order_classifier_input=False
    )
    assert m2.blocks()[0].ou is not None and m2.blocks()[-1].ou is None
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, kept=1, order_classifier_input=False)
    assert r.blocks[-1].ou is None
    assert r(torch.randn(2, 3, 8, 8), width=0.25).shape == (2, 5)


def test_residual_addition_slices_and_pads_the_shortcut():
    main, sc = torch.ones(2, 3, 2, 2), torch.arange(5.0).view(1, 5, 1, 1).expand(2, 5, 2, 2)
    out = add_at_width(main, sc)
    assert out.shape == (2, 3, 2, 2) and torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 2, 3]))
    out = add_at_width(torch.ones(1, 4, 1, 1), torch.ones(1, 2, 1, 1))
    assert out.flatten().tolist() == [2.0, 2.0, 1.0, 1.0]


def test_model_hooks_name_real_modules():
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, kept=1)
    names = dict(r.named_modules())
    assert len(r.residual_blocks()) == 9
    assert all(n in names for b in r.residual_blocks() for n in b)
    assert all(n in names for n in r.norm_followed_weights())
    assert "blocks.3.shortcut_conv" in r.norm_followed_weights()
    v = NestedVGG("11", (3, 32, 32), 10, groups=32, kept=2)
    assert len(v.norm_followed_weights()) == 8
    lenet = NestedLeNet((1, 28, 28), 10, (8, 16, 32), groups=4, norm="batch")
    assert lenet.norm_followed_weights() == ["conv1.conv", "conv2.conv", "fc"]
    for m in (r, v, lenet):
        layers = [layer for layer, _ in m.weight_kl_pairs()]
        assert m.classifier in layers


def test_vgg11_wide_channels_and_resnet18_builds():
    v = NestedVGG("11-wide", (3, 32, 32), 10, groups=32, kept=2)
    assert [b.conv.out_channels for b in v.blocks()] == [96, 192, 384, 384, 768, 768, 768, 768]
    r = NestedResNet("18", (3, 32, 32), 10, groups=32, kept=2)
    assert r.classifier.in_features == 512 and len(r.blocks) == 8


def test_registry_builds_the_zoo_as_plain_networks_nested_by_nestify():
    m = build_model(_cfg(), {}, (1, 28, 28), 10)
    assert isinstance(m, NestifiedModel) and isinstance(m.net, LeNet)
    # conv1 is not ordered (order_first false); conv2 and fc are; the classifier never
    assert m.dims() == ["conv2.0", "fc.0"]
    assert isinstance(build_model(_cfg(name="vgg", variant="11"), {}, (3, 32, 32), 10).net, VGG)
    r = build_model(_cfg(name="resnet", variant="20"), {}, (3, 8, 8), 10)
    assert isinstance(r.net, ResNet)
    # stage 1's residual stream starts at the stem (not ordered); stages 2 and 3 are one
    # dimension each, shared by every block of the stage and its shortcut
    streams = {d.name: sorted(d.modules("out")) for d in r.structure.residual_dims()}
    assert len(streams) == 2
    assert "blocks.3.shortcut.0" in streams["blocks.3.conv2"]
    assert {"blocks.4.conv2", "blocks.5.conv2"} <= set(streams["blocks.3.conv2"])
    with pytest.raises(
        ValueError,
        match=r"model.name: unknown model .alexnet.; accepted: (?=.*lenet)(?=.*mlp)(?=.*resnet)(?=.*vgg)",
    ):
        build_model(_cfg(name="alexnet"), {}, (1, 28, 28), 10)
    with pytest.raises(ValueError, match="variant must be one of"):
        build_model(_cfg(name="vgg", variant="13"), {}, (3, 32, 32), 10)
    with pytest.raises(ValueError, match="model.hidden: lenet"):
        build_model(_cfg(hidden=[256, 256]), {}, (1, 28, 28), 10)


@torch.no_grad()
def test_nestified_lenet_computes_what_the_hand_nested_lenet_computes():
    """The zoo rebuilt by nestify equals the hand-nested NestedLeNet with the same weights at every
    width (eval, no norm)."""
    torch.manual_seed(0)
    old = NestedLeNet((1, 28, 28), 10, (8, 16, 32), groups=4, kept=1, norm="none").eval()
    new = build_model(_cfg(norm="none"), {}, (1, 28, 28), 10).eval()
    names = {
        "conv1.0": "conv1.conv",
        "conv2.0": "conv2.conv",
        "fc.0": "fc",
        "classifier": "classifier",
    }
    for n_new, n_old in names.items():
        new.net.get_submodule(n_new).weight.copy_(old.get_submodule(n_old).weight)
        new.net.get_submodule(n_new).bias.copy_(old.get_submodule(n_old).bias)
    x = torch.randn(3, 1, 28, 28)
    for w in (0.25, 0.5, 0.75, 1.0):
        torch.testing.assert_close(new(x, width=w), old(x, width=w), rtol=1e-5, atol=1e-5)


def test_calibrate_bn_on_resnet_and_gaussian_kl_finite():
    r = NestedResNet("20", (3, 8, 8), 5, groups=4, kept=1, weight_posterior="gaussian")
    data = [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(2)]
    recalibrate_bn(r, data, widths=[0.25, 1.0], num_batches=2)
    assert r.blocks[0].bn2.calibrated_channels() == [8, 16]
    assert torch.isfinite(r.kl()) and r.kl() > 0


def test_model_options_are_one_definition_with_per_model_defaults():
    from bnn_nested.models import NestedLeNet, NestedResNet, NestedVGG

    lenet = NestedLeNet((1, 8, 8), 4, (4, 8, 16), groups=4, kept=1)
    assert lenet.conv2.ou.groups == 4 and lenet.conv2.ou.kept == 1
    assert lenet.fc_bn is None  # LeNet's default: no batch norm
    resnet = NestedResNet("20", (3, 8, 8), 5)
    assert resnet.stem.ou is None or resnet.stem.ou.groups == 16  # ResNet's default groups
    with pytest.raises(TypeError, match="unknown option 'group'; accepted: groups, kept"):
        NestedVGG("11", (3, 8, 8), 5, group=4)
