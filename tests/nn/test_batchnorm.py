"""Batch-norm statistics per width: calibration, lookup, warnings, state_dict round trip."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.nn import (
    NestedBatchNorm2d,
    NestedConv2d,
    NestedLinear,
    NestedModel,
    OrderingUnit,
    recalibrate_bn,
)


class Tiny(NestedModel):
    def __init__(self):
        super().__init__()
        self.conv1 = NestedConv2d(1, 8, 3, padding=1, bias=False, order_groups=4, kept=1)
        self.bn1 = NestedBatchNorm2d(8)
        self.ou1 = OrderingUnit(8, 4, 1)
        self.conv2 = NestedConv2d(8, 8, 3, padding=1, bias=False, order_groups=4, kept=1)
        self.bn2 = NestedBatchNorm2d(8)
        self.ou2 = OrderingUnit(8, 4, 1)
        self.fc = NestedLinear(8, 3, ordered=False)

    def forward_full(self, x):
        h = self.ou1(torch.relu(self.bn1(self.conv1(x))))
        h = self.ou2(torch.relu(self.bn2(self.conv2(h))))
        return self.fc(h.mean((2, 3)))


def _loader(n=24, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 5, 5, generator=g) * 2 + 1
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=batch)


def _trained():
    model = Tiny().train()
    with model.masking(False):
        for x, _ in _loader(seed=5):
            model(x)
    return model.eval()


def test_calibrated_stats_equal_feature_mean_and_var_at_that_width():
    model = _trained()
    seen = {"bn1": [], "bn2": []}
    hooks = [
        getattr(model, n).register_forward_pre_hook(lambda m, i, n=n: seen[n].append(i[0].detach()))
        for n in seen
    ]
    recalibrate_bn(model, _loader(), widths=[0.5], num_batches=None)
    for h in hooks:
        h.remove()
    for name, feats in seen.items():
        f = torch.cat(feats).transpose(0, 1).flatten(1).double()  # (c, N*H*W)
        c = f.shape[0]
        assert c == (1 + 2) * 2  # F + ceil(0.5 * K) groups of 2 channels
        bn = getattr(model, name)
        assert bn.calibrated_channels() == [c]
        torch.testing.assert_close(bn.calib_mean[0, :c].double(), f.mean(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.calib_var[0, :c].double(), f.var(1), rtol=1e-5, atol=1e-6)


def test_calibration_changes_only_the_calibrated_width():
    model = _trained()
    running = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    recalibrate_bn(model, _loader(), widths=[0.5, 1.0], num_batches=2)
    rows = {
        c: model.bn2.calib_mean[i].clone() for i, c in enumerate(model.bn2.calibrated_channels())
    }
    assert sorted(rows) == [6, 8]
    recalibrate_bn(model, _loader(seed=3), widths=[0.25], num_batches=1)
    after = dict(zip(model.bn2.calibrated_channels(), model.bn2.calib_mean))
    assert sorted(after) == [4, 6, 8]
    for c, row in rows.items():
        assert torch.equal(after[c], row)  # other widths untouched
    assert not torch.allclose(after[4][:4], rows[6][:4])
    for k, v in running.items():  # training running statistics are left alone
        assert torch.equal(model.state_dict()[k], v)


def test_eval_uses_calibrated_stats_and_uncalibrated_width_warns_once():
    model = _trained()
    recalibrate_bn(model, _loader(), widths=[0.5], num_batches=3)
    x = torch.randn(2, 1, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x, width=0.5)  # calibrated: no warning
    bn = model.bn1
    with model.width(0.5):
        z = model.conv1(x)
        out = bn(z)
    expect = F.batch_norm(
        z, bn.calib_mean[0, :6], bn.calib_var[0, :6], bn.weight[:6], bn.bias[:6], False, 0.0, bn.eps
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
    assert state["bn1.calib_mean"].shape == (2, 8)
    fresh = Tiny()
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(3, 1, 5, 5)
    for w in (0.25, 1.0):
        torch.testing.assert_close(fresh(x, width=w), model(x, width=w))
    old = {k: v for k, v in state.items() if "calib" not in k}
    other = Tiny()
    other.load_state_dict(old)  # strict: checkpoints without per-width statistics still load
    assert other.bn1.calibrated_channels() == []


def test_calibrate_bn_validates():
    model = Tiny()
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_bn(model, _loader(), [1.0], num_batches=0)
    with pytest.raises(ValueError, match="width must be in"):
        recalibrate_bn(model, _loader(), [1.5], num_batches=1)


def test_per_layer_widths_calibrate_each_layer_at_its_own_width():
    model = _trained()
    alloc = {"conv1": 2, "conv2": 4}  # 4 and 8 active channels
    used = recalibrate_bn(model, _loader(), widths=[alloc], num_batches=2)
    assert used == {(("conv1", 2), ("conv2", 4)): 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 1, 5, 5), width=alloc)  # both layers calibrated: no warning
    assert model.bn1.calib_channels.tolist() == [4] and model.bn2.calib_channels.tolist() == [8]


def test_same_channel_count_at_different_widths_gets_its_own_statistics():
    """A norm whose own width never changes but whose input depends on the model width (here bn2
    with conv2 unordered) keeps one row per model width, not one per channel count."""
    import copy

    base = _trained()
    base.conv2.ordered = False  # bn2 always sees 8 channels; its input still depends on conv1
    base.conv2.active_out_groups = None
    model, only = copy.deepcopy(base), copy.deepcopy(base)
    recalibrate_bn(model, _loader(), widths=[0.25, 1.0])
    assert model.bn2.calib_channels.tolist() == [8, 8]
    assert model.bn2.calib_width.tolist() == [0.25, 1.0]
    assert not torch.allclose(model.bn2.calib_mean[0], model.bn2.calib_mean[1])
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
    assert model.conv1.out_active(8) == 8 and model.current_width == 1.0
