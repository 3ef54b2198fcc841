"""Uncertainty cascade: limits at thresholds +-inf, cost accounting, online == simulated."""

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.deploy.cascade import (
    Cascade,
    calibrate_thresholds,
    cascade_metrics,
    mean_flops,
    simulate,
    stage_probs,
)
from bnn_nested.evaluation.metrics import accuracy
from tests.deploy.helpers import mlp

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")
WIDTHS = [0.25, 0.5, 1.0]


def _data():
    model, x = mlp()
    y = torch.randint(0, 3, (len(x),))
    return model, x, DataLoader(TensorDataset(x, y), batch_size=8), y


def test_infinite_thresholds_give_narrowest_and_widest():
    model, x, loader, y = _data()
    probs, targets = stage_probs(model, loader, WIDTHS)
    p, exits = simulate(probs, [math.inf, math.inf])
    torch.testing.assert_close(p, probs[0][0].to(p))
    assert (exits == 0).all()
    p, exits = simulate(probs, [-math.inf, -math.inf])
    torch.testing.assert_close(p, probs[-1][0].to(p))
    assert (exits == 2).all()
    for thr, w in (([math.inf] * 2, 0.25), ([-math.inf] * 2, 1.0)):
        out, _ = Cascade(model, WIDTHS, thr).predict(x)
        expected = torch.softmax(model(x, width=w), -1).to(out)
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_online_equals_simulated_and_flops():
    model, x, loader, y = _data()
    probs, targets = stage_probs(model, loader, WIDTHS)
    thr = calibrate_thresholds(probs, "entropy", quantile=0.5)
    p_sim, e_sim = simulate(probs, thr, "entropy")
    p_on, e_on = Cascade(model, WIDTHS, thr, "entropy").predict(x)
    assert torch.equal(e_sim, e_on)
    torch.testing.assert_close(p_on, p_sim.to(p_on), atol=1e-6, rtol=0)
    # about half leave at stage 0 (median threshold, ties aside)
    assert 0.3 <= float((e_sim == 0).double().mean()) <= 0.7
    # hand case: exits (0, 1, 2) with stage FLOPs (1, 2, 4) cost 1, 3, 7 -> mean 11/3
    assert mean_flops(torch.tensor([0, 1, 2]), [1, 2, 4]) == pytest.approx(11 / 3)
    row = cascade_metrics(probs, targets, thr, [1, 2, 4])
    assert row["cls/acc"] == pytest.approx(accuracy(p_sim, targets))
    assert sum(row[f"exit/{i}"] for i in range(3)) == pytest.approx(1.0)


def test_validation():
    model, x, loader, y = _data()
    with pytest.raises(ValueError, match="widths"):
        Cascade(model, [1.0, 0.5], [0.1])
    with pytest.raises(ValueError, match="thresholds"):
        Cascade(model, [0.5, 1.0], [])
    with pytest.raises(ValueError, match="score"):
        Cascade(model, [0.5, 1.0], [0.1], score="bogus")
    with pytest.raises(ValueError, match="samples"):
        Cascade(model, [0.5, 1.0], [0.1], score="mutual_information").predict(x)
