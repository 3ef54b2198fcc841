"""Batch-norm statistics per width: calibration, lookup, warnings, state_dict round trip.

A nestified model masks the inputs of the layers consuming a dimension, so a norm always sees its
whole dimension; what changes with the width is what flows into it from upstream."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.nest import nestify
from bnn_nested.nn import recalibrate_bn
from bnn_nested.nn.batchnorm import width_key


class Tiny(nn.Module):
    """conv -> BN -> ReLU twice, a global mean and a linear classifier (dimensions conv1, conv2)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def _nested(**kw):
    return nestify(Tiny().eval(), torch.randn(2, 1, 5, 5), groups=4, kept=1, **kw)


def _loader(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 5, 5, generator=g) * 2 + 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch)


def _trained(**kw):
    model = _nested(**kw).train()
    with model.masking(False):
        for x, _ in _loader(seed=5):
            model(x)
    return model.eval()


def test_calibrated_stats_equal_feature_mean_and_var_at_that_width():
    model = _trained()
    seen = {"bn1": [], "bn2": []}
    hooks = [
        model.net.get_submodule(n).register_forward_pre_hook(
            lambda m, i, n=n: seen[n].append(i[0].detach())
        )
        for n in seen
    ]
    recalibrate_bn(model, _loader(), widths=[0.5], num_batches=None)
    for h in hooks:
        h.remove()
    for name, feats in seen.items():
        f = torch.cat(feats).transpose(0, 1).flatten(1).double()  # (c, N*H*W)
        bn = model.net.get_submodule(name)
        assert f.shape[0] == 8 and bn.calibrated_channels() == [8]  # the whole dimension
        assert bn.calib_width.tolist() == [0.5]
        torch.testing.assert_close(bn.calib_mean[0].double(), f.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.calib_var[0].double(), f.var(1), rtol=1e-5, atol=1e-6)


def test_calibration_changes_only_the_calibrated_width():
    model = _trained()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_bn(model, _loader(), widths=[0.5, 1.0], num_batches=2)
    bn2 = model.net.bn2
    rows = {w: bn2.calib_mean[i].clone() for i, w in enumerate(bn2.calib_width.tolist())}
    assert sorted(rows) == [0.5, 1.0]
    recalibrate_bn(model, _loader(seed=3), widths=[0.25], num_batches=1)
    after = dict(zip(bn2.calib_width.tolist(), bn2.calib_mean))
    assert sorted(after) == [0.25, 0.5, 1.0]
    for w, row in rows.items():
        assert torch.equal(after[w], row)  # other widths untouched
    assert not torch.allclose(after[0.25], rows[0.5])
    for k, v in running.items():  # training running statistics are left alone
        assert torch.equal(model.state_dict()[k], v)


def test_eval_uses_calibrated_stats_and_uncalibrated_width_warns_once():
    model = _trained()
    recalibrate_bn(model, _loader(), widths=[0.5], num_batches=3)
    x = torch.randn(2, 1, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x, width=0.5)  # calibrated: no warning
    bn = model.net.bn1
    with model.width(0.5):
        z = model.net.conv1(x)
        out = bn(z)
    expect = F.batch_norm(
        z, bn.calib_mean[0], bn.calib_var[0], bn.weight, bn.bias, False, 0.0, bn.eps
    )
    torch.testing.assert_close(out, expect)
    with pytest.warns(UserWarning, match="no statistics calibrated"):
        model(x, width=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x, width=0.25)  # warned once already


def test_state_dict_round_trip_and_old_checkpoints_load():
    model = _trained()
    recalibrate_bn(model, _loader(), widths=[0.25, 1.0], num_batches=1)
    state = model.state_dict()
    assert state["net.bn1.calib_mean"].shape == (2, 8)
    fresh = _nested()
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(3, 1, 5, 5)
    for w in (0.25, 1.0):
        torch.testing.assert_close(fresh(x, width=w), model(x, width=w))
    old = {k: v for k, v in state.items() if "calib" not in k}
    other = _nested()
    other.load_state_dict(old)  # strict: checkpoints without per-width statistics still load
    assert other.net.bn1.calibrated_channels() == []


def test_calibrate_bn_validates():
    model = _nested()
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_bn(model, _loader(), [1.0], num_batches=0)
    with pytest.raises(ValueError, match="width must be in"):
        recalibrate_bn(model, _loader(), [1.5], num_batches=1)


def test_per_layer_widths_calibrate_each_layer_at_its_own_width():
    model = _trained()
    alloc = {"conv1": 2, "conv2": 4}  # 4 and 8 of 8 channels
    used = recalibrate_bn(model, _loader(), widths=[alloc], num_batches=2)
    assert used == {(("conv1", 2), ("conv2", 4)): 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 1, 5, 5), width=alloc)  # both layers calibrated: no warning
    for bn in (model.net.bn1, model.net.bn2):
        assert bn.calib_width.tolist() == [width_key(alloc)]


def test_same_channel_count_at_different_widths_gets_its_own_statistics():
    """A norm whose own width never changes but whose input depends on the model width (here bn2
    with conv2 unordered) keeps one row per model width, not one per channel count."""
    import copy

    base = _trained(exclude=["conv2"])  # bn2's input still depends on conv1's width
    assert base.dims() == ["conv1"]
    model, only = copy.deepcopy(base), copy.deepcopy(base)
    recalibrate_bn(model, _loader(), widths=[0.25, 1.0])
    bn2 = model.net.bn2
    assert bn2.calib_channels.tolist() == [8, 8]
    assert bn2.calib_width.tolist() == [0.25, 1.0]
    assert not torch.allclose(bn2.calib_mean[0], bn2.calib_mean[1])
    recalibrate_bn(only, _loader(), widths=[0.25])
    x = torch.randn(4, 1, 5, 5)
    torch.testing.assert_close(model(x, width=0.25), only(x, width=0.25))


def test_failed_width_change_leaves_the_model_unchanged():
    model = _trained()
    x = torch.randn(2, 1, 5, 5)
    before = model(x)
    with pytest.raises(ValueError, match="active groups"):
        with model.width({"conv1": 2, "conv2": 99}):
            pass
    torch.testing.assert_close(model(x), before)
    assert model.active_groups() == {"conv1": 4, "conv2": 4} and model.current_width == 1.0
