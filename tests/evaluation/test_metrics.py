"""Tests for bnn_nested.evaluation.metrics: hand-computed cases and reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from bnn_nested.evaluation import metrics as M


def _random_case(seed: int, s: int | None = None, b: int = 400, c: int = 10):
    """Random probabilities whose argmax is correct about half the time."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, c) if s is None else (s, b, c)
    logits = 3.0 * torch.randn(shape, generator=g)
    probs = torch.softmax(logits, -1)
    pred = M.mean_probs(probs).argmax(-1)
    noise = torch.randint(0, c, (b,), generator=g)
    keep = torch.rand(b, generator=g) < 0.5
    targets = torch.where(keep, pred, noise)
    return probs, targets


# --------------------------------------------------------------------------- hand-computed


def test_accuracy_hand():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert M.accuracy(probs, torch.tensor([0, 0, 0])) == pytest.approx(2 / 3)


def test_nll_uses_mc_averaged_probs():
    # p̄ = [0.5, 0.5] -> NLL = log 2; the mean of per-sample NLLs would be -(log .8 + log .2) / 2.
    probs = torch.tensor([[[0.8, 0.2]], [[0.2, 0.8]]])
    assert M.nll(probs, torch.tensor([0])) == pytest.approx(math.log(2), abs=1e-7)


def test_nll_clamps_zero_probability():
    value = M.nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]))
    assert value == pytest.approx(-math.log(M.NLL_EPS))


def test_brier_hand():
    assert M.brier(torch.tensor([[0.5, 0.5]]), torch.tensor([0])) == pytest.approx(0.5)
    assert M.brier(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == pytest.approx(0.0)
    # (0.7)^2 + (0.2 - 1)^2 + (0.1)^2 = 0.49 + 0.64 + 0.01
    probs = torch.tensor([[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    assert M.brier(probs, torch.tensor([1, 0])) == pytest.approx(1.14 / 2)


def _ece_case():
    # Two confidence levels away from bin edges (15 bins): 0.95 in (14/15, 1], 0.55 in (8/15, 9/15].
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55]])
    targets = torch.tensor([0, 1, 0, 0])  # correct, wrong, correct, wrong
    return probs, targets


def test_ece_mce_hand():
    probs, targets = _ece_case()
    # bin 0.95: acc .5, conf .95, gap .45, weight .5; bin 0.55: acc .5, conf .55, gap .05, weight .5
    assert M.ece(probs, targets) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert M.mce(probs, targets) == pytest.approx(0.45)


def test_reliability_data_hand():
    probs, targets = _ece_case()
    data = M.reliability_data(probs, targets, n_bins=15)
    assert data.n_bins == 15 and data.edges.shape == (16,)
    assert data.counts.sum() == 4
    assert data.counts[14] == 2 and data.counts[8] == 2
    assert data.confidence[14] == pytest.approx(0.95)
    assert data.accuracy[8] == pytest.approx(0.5)
    empty = data.counts == 0
    assert torch.isnan(data.confidence[empty]).all() and torch.isnan(data.accuracy[empty]).all()


def test_bins_are_left_open_right_closed():
    # 4 bins: edges 0, .25, .5, .75, 1. Confidence 0.5 -> bin 1 (.25, .5]; 0.75 -> bin 2; 1 -> bin 3.
    probs = torch.tensor([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    data = M.reliability_data(probs, torch.tensor([0, 0, 0]), n_bins=4)
    assert data.counts.tolist() == [0, 1, 1, 1]


def test_adaptive_ece_hand():
    # Sorted confidences .55 (right), .6 (wrong) | .9 (right), .95 (wrong); 2 equal-mass bins.
    probs = torch.tensor([[0.9, 0.1], [0.55, 0.45], [0.95, 0.05], [0.6, 0.4]])
    targets = torch.tensor([0, 0, 1, 1])
    # bin 1: acc .5 conf .575 -> .075; bin 2: acc .5 conf .925 -> .425
    assert M.adaptive_ece(probs, targets, n_bins=2) == pytest.approx(0.5 * 0.075 + 0.5 * 0.425)


def test_entropies_hand():
    uniform = torch.full((3, 4), 0.25)
    assert torch.allclose(M.predictive_entropy(uniform), torch.full((3,), math.log(4)).double())
    onehot = torch.tensor([[1.0, 0.0, 0.0]])
    assert M.predictive_entropy(onehot).item() == 0.0
    # Two confident samples that disagree: H[p̄] = log 2, E H = 0, MI = log 2.
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert M.predictive_entropy(probs).item() == pytest.approx(math.log(2))
    assert M.expected_entropy(probs).item() == pytest.approx(0.0)
    assert M.mutual_information(probs).item() == pytest.approx(math.log(2))


# --------------------------------------------------------------------------- references


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_mce_match_torchmetrics(seed):
    probs, targets = _random_case(seed)
    for norm, ours in (("l1", M.ece), ("max", M.mce)):
        ref = multiclass_calibration_error(probs, targets, num_classes=10, n_bins=15, norm=norm)
        assert ours(probs, targets, n_bins=15) == pytest.approx(float(ref), abs=1e-5)


def test_ece_mc_matches_torchmetrics_on_mean():
    probs, targets = _random_case(3, s=5)
    ref = multiclass_calibration_error(probs.mean(0), targets, num_classes=10, n_bins=15)
    assert M.ece(probs, targets) == pytest.approx(float(ref), abs=1e-5)


def test_ece_is_not_batch_averaged():
    probs, targets = _random_case(4, b=200)
    whole = M.ece(probs, targets)
    per_batch = np.mean([M.ece(probs[i : i + 50], targets[i : i + 50]) for i in range(0, 200, 50)])
    assert whole != pytest.approx(per_batch, abs=1e-4)


def test_reliability_ece_equals_weighted_gaps():
    probs, targets = _random_case(5)
    data = M.reliability_data(probs, targets)
    nonempty = data.counts > 0
    w = data.counts[nonempty].double() / data.counts.sum()
    assert data.ece == pytest.approx(float((w * data.gaps[nonempty]).sum()))
    assert M.ece(probs, targets) == pytest.approx(data.ece)


def test_nll_matches_torch_nll_loss():
    probs, targets = _random_case(6, s=4)
    ref = F.nll_loss(probs.double().mean(0).log(), targets)
    assert M.nll(probs, targets) == pytest.approx(float(ref), rel=1e-10)


def test_brier_matches_numpy():
    probs, targets = _random_case(7, s=3)
    p = probs.double().mean(0).numpy()
    onehot = np.eye(10)[targets.numpy()]
    assert M.brier(probs, targets) == pytest.approx(float(((p - onehot) ** 2).sum(1).mean()))


def test_accuracy_matches_argmax():
    probs, targets = _random_case(8)
    expected = (probs.argmax(-1) == targets).float().mean().item()
    assert M.accuracy(probs, targets) == pytest.approx(expected)


def test_adaptive_ece_bins_have_equal_mass():
    probs, targets = _random_case(9, b=300)
    conf, pred = probs.double().max(-1)
    order = conf.argsort()
    correct = (pred == targets).double()
    expected = sum(
        abs(correct[order[i : i + 20]].mean() - conf[order[i : i + 20]].mean()) * 20 / 300
        for i in range(0, 300, 20)
    )
    assert M.adaptive_ece(probs, targets, n_bins=15) == pytest.approx(float(expected))


# --------------------------------------------------------------------------- decomposition


def test_mutual_information_decomposition():
    g = torch.Generator().manual_seed(10)
    probs = torch.softmax(2.0 * torch.randn(6, 50, 5, generator=g), -1)
    mi = M.mutual_information(probs)
    assert (mi >= 0).all()
    diff = M.predictive_entropy(probs) - M.expected_entropy(probs)
    assert torch.allclose(mi, diff.clamp_min(0), atol=1e-12)
    assert (diff > 1e-3).any()  # the samples genuinely disagree


def test_mutual_information_single_sample_is_zero():
    g = torch.Generator().manual_seed(11)
    probs = torch.softmax(torch.randn(1, 20, 4, generator=g), -1)
    assert torch.equal(M.mutual_information(probs), torch.zeros(20, dtype=torch.float64))
    same = probs.expand(5, 20, 4)
    assert torch.allclose(M.mutual_information(same), torch.zeros(20).double(), atol=1e-12)


# --------------------------------------------------------------------------- report and errors


def test_classification_report_keys_and_values():
    probs, targets = _random_case(12, s=2)
    report = M.classification_report(probs, targets)
    assert set(report) == set(M.HIGHER_IS_BETTER)
    assert report["cls/acc"] == pytest.approx(M.accuracy(probs, targets))
    assert report["cls/nll"] == pytest.approx(M.nll(probs, targets))
    assert report["cls/brier"] == pytest.approx(M.brier(probs, targets))
    assert report["cal/ece"] == pytest.approx(M.ece(probs, targets))
    assert report["cal/aece"] == pytest.approx(M.adaptive_ece(probs, targets))
    assert report["cal/mce"] == pytest.approx(M.mce(probs, targets))
    assert all(isinstance(v, float) for v in report.values())


@pytest.mark.parametrize(
    "probs, targets",
    [
        (torch.full((4,), 0.25), torch.tensor([0])),  # 1-D probs
        (torch.full((1, 1, 2, 2), 0.5), torch.tensor([0, 0])),  # 4-D probs
        (torch.full((3, 2), 0.5), torch.tensor([0, 1])),  # wrong target length
        (torch.full((2, 2), 0.5), torch.tensor([[0], [1]])),  # 2-D targets
        (torch.full((2, 2), 0.5), torch.tensor([0.0, 1.0])),  # float targets
        (torch.full((2, 2), 0.5), torch.tensor([0, 2])),  # target out of range
        (torch.tensor([[2.0, -1.0], [0.3, 0.3]]), torch.tensor([0, 1])),  # logits, not probs
    ],
)
def test_bad_inputs_raise(probs, targets):
    for fn in (M.accuracy, M.nll, M.brier, M.ece, M.adaptive_ece, M.classification_report):
        with pytest.raises(ValueError):
            fn(probs, targets)


def test_sample_metrics_need_three_dims():
    with pytest.raises(ValueError, match="S, B, C"):
        M.mutual_information(torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match="S, B, C"):
        M.expected_entropy(torch.full((2, 3), 1 / 3))


def test_bad_n_bins_raises():
    probs, targets = _ece_case()
    with pytest.raises(ValueError, match="n_bins"):
        M.ece(probs, targets, n_bins=0)
