"""LeNet / VGG / ResNet: shapes at several widths, masked == sliced in eval, registry, hooks."""

import pytest
import torch

from bnn_nested.config import ModelConfig
from bnn_nested.models import VGG, LeNet, ResNet, build_model
from bnn_nested.nest import NestifiedModel, nestify, sliced_network
from bnn_nested.nn import active_groups, recalibrate_bn
from tests.zoo import zoo

pytestmark = pytest.mark.filterwarnings("ignore::bnn_nested.nn.batchnorm.UncalibratedWidthWarning")

SMALL_VGG = [8, "M", 16, "M", 16]
SMALL = {"hidden": [8, 16, 32], "groups": 4, "kept": 1}  # LeNet's conv1, conv2 and fc widths


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
    """The zoo as a config builds it (``lenet28``: batch norm; ``lenet8``: flat inputs, Gaussian
    weights; ``resnet``) and a small plain VGG plan nested by ``nestify`` (Gaussian weights)."""
    x = torch.randn(2, 3, 8, 8)
    vgg = VGG(SMALL_VGG, (3, 8, 8), 5, norm="batch")
    return {
        "lenet28": (zoo("lenet", (1, 28, 28), 10, **SMALL, norm="batch"), (1, 28, 28)),
        "lenet8": (zoo("lenet", (64,), 10, **SMALL, weight_posterior="gaussian"), (64,)),
        "vgg": (nestify(vgg, x, groups=4, kept=1, weight_posterior="gaussian"), (3, 8, 8)),
        "resnet": (zoo("resnet", (3, 8, 8), 5, variant="20", groups=4, kept=1), (3, 8, 8)),
    }


def _warm_bn(model, shape):
    model.train()
    with model.masking(False):
        for _ in range(2):
            model(torch.randn((6,) + shape))
    return model.eval()


@pytest.mark.parametrize("name", ["lenet28", "lenet8", "vgg", "resnet"])
def test_shapes_and_masked_equals_sliced_in_eval(name):
    """At every width the masked model computes what the physically sliced plain network does."""
    model, shape = _models()[name]
    _warm_bn(model, shape)
    x = torch.randn((3,) + shape)
    for width in (0.25, 0.5, 1.0):
        masked = model(x, width=width)
        assert masked.shape == (3, model.net.classifier.out_features)
        sliced = sliced_network(model, width, x)(x)
        torch.testing.assert_close(masked, sliced, atol=1e-5, rtol=1e-4)


def test_first_layer_and_classifier_input_ordered_as_the_config_says():
    vgg = dict(variant="11", groups=4, kept=1)
    m = zoo("vgg", (3, 8, 8), 5, **vgg)
    convs = [n for n, c in m.net.named_modules() if isinstance(c, torch.nn.Conv2d)]
    assert (
        len(convs) == 8 and m.dims() == convs[1:]
    )  # the first layer is not ordered by default; the classifier never
    dims = zoo("vgg", (3, 8, 8), 5, **vgg, order_first=True, order_classifier_input=False).dims()
    assert dims == convs[:-1]
    r = zoo("resnet", (3, 8, 8), 5, variant="20", groups=4, kept=1, order_classifier_input=False)
    assert "blocks.6.block1.0" in r.dims() and "blocks.6.conv2" not in r.dims()  # stage 3's stream
    assert r(torch.randn(2, 3, 8, 8), width=0.25).shape == (2, 5)


def test_model_hooks_name_real_modules():
    r = zoo("resnet", (3, 8, 8), 5, variant="20", groups=4, kept=1, norm="batch")
    names = dict(r.named_modules())
    assert len(r.residual_blocks()) == 9
    assert all(n in names for b in r.residual_blocks() for n in b)
    assert all(n in names for n in r.norm_followed_weights())
    assert "net.blocks.3.shortcut.0" in r.norm_followed_weights()
    v = zoo("vgg", (3, 8, 8), 10, variant="11", groups=32, kept=2, norm="batch")
    assert len(v.norm_followed_weights()) == 8
    lenet = zoo("lenet", (1, 28, 28), 10, **SMALL, norm="batch")
    assert lenet.norm_followed_weights() == ["net.conv1.0", "net.conv2.0", "net.fc.0"]


def test_vgg11_wide_channels_and_resnet18_builds():
    v = zoo("vgg", (3, 8, 8), 10, variant="11-wide", groups=32, kept=2).net
    convs = [m.out_channels for m in v.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs == [96, 192, 384, 384, 768, 768, 768, 768]
    r = zoo("resnet", (3, 8, 8), 10, variant="18", groups=32, kept=2).net
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
def test_nestified_lenet_computes_a_smaller_lenet_with_the_leading_weights():
    """At every width the zoo's LeNet (no norm) equals a plain LeNet built with the kept channel
    counts, holding the leading rows / columns of each weight (conv1 is not ordered; conv2 keeps
    4 channels a group, fc 8 units a group; fc reads conv2's 7 x 7 map of each kept channel)."""
    torch.manual_seed(0)
    new = build_model(_cfg(norm="none"), {}, (1, 28, 28), 10).eval()
    net = new.net
    x = torch.randn(3, 1, 28, 28)
    for w in (0.25, 0.5, 0.75, 1.0):
        c2, fc = 4 * active_groups(w, 4, 1), 8 * active_groups(w, 4, 1)
        small = LeNet((1, 28, 28), 10, (8, c2, fc)).eval()
        small.conv1.load_state_dict(net.conv1.state_dict())
        small.conv2[0].weight.copy_(net.conv2[0].weight[:c2])
        small.conv2[0].bias.copy_(net.conv2[0].bias[:c2])
        small.fc[0].weight.copy_(net.fc[0].weight[:fc, : c2 * 49])
        small.fc[0].bias.copy_(net.fc[0].bias[:fc])
        small.classifier.weight.copy_(net.classifier.weight[:, :fc])
        small.classifier.bias.copy_(net.classifier.bias)
        torch.testing.assert_close(new(x, width=w), small(x), rtol=1e-5, atol=1e-5)


def test_calibrate_bn_on_resnet_and_gaussian_kl_finite():
    r = zoo(
        "resnet",
        (3, 8, 8),
        5,
        variant="20",
        groups=4,
        kept=1,
        norm="batch",
        weight_posterior="gaussian",
    )
    data = [(torch.randn(4, 3, 8, 8), torch.zeros(4)) for _ in range(2)]
    recalibrate_bn(r, data, widths=[0.25, 1.0], num_batches=2)
    assert r.net.blocks[0].bn2.calib_width.tolist() == [0.25, 1.0]  # one row per width
    assert torch.isfinite(r.kl()) and r.kl() > 0
