"""Export: the plain module equals the nested model at width r, loads with torch alone."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from bnn_nested.cost import count_params
from bnn_nested.deploy.export import export_width, exported_param_count, fold_bn
from bnn_nested.deploy.serialize import load_exported, save_exported
from bnn_nested.nn import NestedMixin
from bnn_nested.nn.batchnorm import recalibrate_bn
from tests.deploy.helpers import cnn, mlp
from tests.zoo import zoo

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")

PLAIN = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Identity, nn.ReLU, nn.Dropout)


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize("width", [0.3, 0.6, 1.0])
@pytest.mark.parametrize("fold", [False, True])
def test_export_equals_nested(make, width, fold):
    model, x = make()
    plain = export_width(model, width, x, fold_batchnorm=fold)
    torch.testing.assert_close(plain(x), model(x, width=width), atol=1e-5, rtol=0)
    leaves = [m for m in plain.modules() if not list(m.children())]
    assert all(isinstance(m, PLAIN) for m in leaves), leaves
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in leaves)
    assert (n_bn == 0) if fold else (n_bn == 2)
    if not fold:  # same parameters as the sliced network (BN affine counted, stats are buffers)
        assert exported_param_count(plain) == count_params(model, x, width)
    # physically sliced: every layer producing a dimension has the active output count
    with model.width(width):
        active = model.active_groups()
    for d in model.structure:
        for name in d.modules("out"):
            assert plain.get_submodule(name).weight.shape[0] == active[d.name] * d.group_size


def test_export_per_layer_width_and_calibrated_stats():
    model, x = cnn()
    recalibrate_bn(model, [x], widths=[0.3])
    plain = export_width(model, 0.3, x)
    torch.testing.assert_close(plain(x), model(x, width=0.3), atol=1e-5, rtol=0)
    # calibrated statistics differ from the running ones: check the export really used them
    with torch.no_grad():
        model.net.b1.clear_calibration(), model.net.b2.clear_calibration()
    assert (plain(x) - model(x, width=0.3)).abs().max() > 1e-3
    alloc = {"c1": 2, "c2": 4}
    model, x = cnn()
    plain = export_width(model, alloc, x)
    torch.testing.assert_close(plain(x), model(x, width=alloc), atol=1e-5, rtol=0)


def test_fold_bn_closed_form():
    conv = nn.Conv2d(2, 3, 1, bias=True)
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    x = torch.randn(2, 2, 3, 3)
    torch.testing.assert_close(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:format=.torchscript. is deprecated:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["export", "torchscript"])
def test_saved_module_loads_with_torch_only(tmp_path, fmt):
    model, x = cnn()
    plain = export_width(model, 0.6, x)
    path = save_exported(plain, x[:2], tmp_path / f"m.{fmt}", format=fmt)
    torch.save(x, tmp_path / "x.pt")
    expected = model(x, width=0.6)
    torch.save(expected, tmp_path / "y.pt")
    load = "torch.export.load(p).module()" if fmt == "export" else "torch.jit.load(p)"
    code = (
        "import sys, torch\n"
        f"p = {str(path)!r}; d = {str(tmp_path)!r}\n"
        f"m = {load}\n"
        "x = torch.load(d + '/x.pt'); y = torch.load(d + '/y.pt')\n"
        "assert (m(x) - y).abs().max() < 1e-5\n"
        "assert (m(x[:5]) - y[:5]).abs().max() < 1e-5\n"  # dynamic batch
        "assert not any(k.startswith('bnn_nested') for k in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-W", "ignore", "-c", code], check=True, timeout=120)
    torch.testing.assert_close(load_exported(path, fmt)(x), expected, atol=1e-5, rtol=0)


def _zoo():
    from tests.deploy.helpers import trained_like

    x8 = torch.randn(6, 1, 8, 8)
    small = {"groups": 4, "kept": 1, "norm": "batch"}
    lenet = zoo("lenet", (1, 8, 8), 10, hidden=[8, 16, 32], weight_posterior="gaussian", **small)
    resnet = zoo("resnet", (1, 8, 8), 10, variant="20", **small)
    return [(trained_like(lenet, x8), x8), (trained_like(resnet, x8), x8)]


@pytest.mark.slow
def test_export_zoo_models(tmp_path):
    """LeNet (Gaussian weights: mean used) and ResNet-20 (residual streams): outputs and parameter
    counts match, no Gaussian layer is left, and the file reloads."""
    for model, x in _zoo():
        for fold in (False, True):
            plain = export_width(model, 0.5, x, fold_batchnorm=fold)
            torch.testing.assert_close(plain(x), model(x, width=0.5), atol=1e-5, rtol=0)
            assert not any(isinstance(m, NestedMixin) for m in plain.modules())
            if not fold:
                assert exported_param_count(plain) == count_params(model, x, 0.5)
        path = save_exported(plain, x, tmp_path / "z.pt2")
        torch.testing.assert_close(load_exported(path)(x), model(x, width=0.5), atol=1e-5, rtol=0)
