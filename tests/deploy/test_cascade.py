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


def test_msp_is_one_minus_max_probability():
    p = torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]]])
    from bnn_nested.deploy.cascade import uncertainty

    torch.testing.assert_close(uncertainty(p, "msp"), torch.tensor([0.3, 0.6]))


def test_flops_count_every_stage_times_samples():
    # exits (0, 1, 2) with stage FLOPs (1, 2, 4) and 8 MC samples: 8 * (1 + 3 + 7) / 3
    assert mean_flops(torch.tensor([0, 1, 2]), [1, 2, 4], samples=8) == pytest.approx(88 / 3)


def test_temperatures_online_equals_simulated():
    from bnn_nested.evaluation.calibration import apply_temperature

    model, x, loader, y = _data()
    temps = {0.25: 2.0, 0.5: 0.5, 1.0: 1.3}
    probs, _ = stage_probs(model, loader, WIDTHS, temperatures=temps)
    raw, _ = stage_probs(model, loader, WIDTHS)
    for p, r, w in zip(probs, raw, WIDTHS):
        torch.testing.assert_close(p, torch.softmax(r.log() / temps[w], -1), atol=1e-6, rtol=0)
        torch.testing.assert_close(p, apply_temperature(r, temps[w]))
    thr = calibrate_thresholds(probs, "msp", quantile=0.5)
    p_sim, e_sim = simulate(probs, thr, "msp")
    p_on, e_on = Cascade(model, WIDTHS, thr, "msp", temperatures=temps).predict(x)
    assert torch.equal(e_sim, e_on)
    torch.testing.assert_close(p_on, p_sim.to(p_on), atol=1e-6, rtol=0)


def _synthetic_stages(n=400, seed=0):
    """Three stages, wider = more accurate; labels fixed."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    out = []
    for noise in (2.5, 1.5, 0.8):
        z = torch.randn(n, 5, generator=g) * noise
        z[torch.arange(n), y] += 1.5
        out.append(torch.softmax(z, -1)[None])
    return out, y


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.5, 0.7, 0.8, 0.9])
def test_choose_threshold_target_accuracy_is_brute_force_optimum(target):
    from bnn_nested.deploy.cascade import choose_threshold

    probs, y = _synthetic_stages()
    flops = [1.0, 3.0, 9.0]
    choice = choose_threshold(probs, y, flops, target_accuracy=target, score="msp")
    # brute force: every distinct validation score (and +-inf) as the shared threshold
    cands = sorted({float(v) for p in probs[:-1] for v in (1 - p[0].max(-1).values)})
    rows = []
    for t in [-math.inf, math.inf, *cands]:
        r = cascade_metrics(probs, y, [t, t], flops, "msp")
        rows.append((r["cost/flops"], r["cls/acc"]))
    feasible = [(f, a) for f, a in rows if a >= target]
    if feasible:
        best_f = min(f for f, _ in feasible)
        assert choice.feasible
        assert choice.val_flops == pytest.approx(best_f)
        assert choice.val_accuracy >= target
    r = cascade_metrics(probs, y, choice.thresholds, flops, "msp")
    assert r["cls/acc"] == pytest.approx(choice.val_accuracy)
    assert r["cost/flops"] == pytest.approx(choice.val_flops)


@pytest.mark.slow
def test_choose_threshold_flops_budget_and_infeasible():
    from bnn_nested.deploy.cascade import choose_threshold

    probs, y = _synthetic_stages(seed=1)
    flops = [1.0, 3.0, 9.0]
    for budget in (2.0, 5.0, 13.0):
        choice = choose_threshold(probs, y, flops, max_flops=budget, score="msp")
        assert choice.feasible and choice.val_flops <= budget
        cands = sorted({float(v) for p in probs[:-1] for v in (1 - p[0].max(-1).values)})
        best = max(
            cascade_metrics(probs, y, [t, t], flops, "msp")["cls/acc"]
            for t in [-math.inf, math.inf, *cands]
            if cascade_metrics(probs, y, [t, t], flops, "msp")["cost/flops"] <= budget
        )
        assert choice.val_accuracy == pytest.approx(best)
    # a budget below the narrowest stage: nothing fits, the cheapest is returned
    choice = choose_threshold(probs, y, flops, max_flops=0.5, score="msp")
    assert not choice.feasible and choice.val_flops == pytest.approx(1.0)
    # an unreachable accuracy: the most accurate is returned
    choice = choose_threshold(probs, y, flops, target_accuracy=1.0, score="msp")
    assert not choice.feasible
    with pytest.raises(ValueError, match="exactly one"):
        choose_threshold(probs, y, flops)


def test_cascade_set_coverage_by_hand():
    probs = [
        torch.tensor([[[0.9, 0.1], [0.6, 0.4]]]),
        torch.tensor([[[0.8, 0.2], [0.3, 0.7]]]),
    ]
    y = torch.tensor([0, 1])
    # stage 0 keeps example 0 (msp 0.1 <= 0.2), example 1 goes on (0.4 > 0.2)
    row = cascade_metrics(probs, y, [0.2], [1, 2], "msp", set_thresholds=[0.5, 0.35])
    # example 0, stage 0, q=0.5: {0} (1-0.9<=0.5; 1-0.1>0.5) covers y=0; example 1, stage 1,
    # q=0.35: {1} (1-0.7=0.3<=0.35) covers y=1
    assert row["set/coverage"] == 1.0 and row["set/size"] == 1.0
    assert row["cost/flops"] == pytest.approx((1 + 3) / 2)
