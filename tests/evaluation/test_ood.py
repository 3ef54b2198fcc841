"""Tests for bnn_nested.evaluation.ood: score convention (higher = OOD) and detection metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from bnn_nested.evaluation import metrics as M
from bnn_nested.evaluation import ood as O

# --------------------------------------------------------------------------- scores


BUILTIN = ("msp", "max_logit", "energy", "entropy", "mutual_information", "expected_entropy")


def test_every_registered_score_says_what_it_takes():
    from bnn_nested.config import BUILTIN_SCORES  # the torch-free names the CLI checks first

    assert set(BUILTIN) == set(BUILTIN_SCORES) and set(BUILTIN) <= set(O.SCORES)
    assert all(O.SCORE_INPUTS[n] == BUILTIN_SCORES[n] for n in BUILTIN)
    assert set(O.SCORES) == set(O.SCORE_INPUTS)
    assert set(O.SCORE_INPUTS.values()) <= {"probs", "samples", "logits"}
    assert O.probability_scores()[:2] == ["msp", "entropy"]
    assert not {"max_logit", "energy"} & set(O.probability_scores())


@pytest.fixture
def user_score():
    """A score registered as a user's module does (removed again afterwards)."""

    def margin(probs):  # 1 - (top1 - top2) of the mean probabilities
        top2 = M.mean_probs(probs).topk(2, -1).values
        return 1.0 - (top2[..., 0] - top2[..., 1])

    O.register_score("margin", margin)
    yield margin
    del O.SCORES._entries["margin"], O.SCORE_INPUTS["margin"]


def test_a_registered_score_serves_ood_selective_and_the_cascade(user_score):
    from bnn_nested.deploy.cascade import uncertainty
    from bnn_nested.evaluation.selective import selective_score

    probs = torch.tensor([[[0.5, 0.5], [0.9, 0.1]], [[0.7, 0.3], [1.0, 0.0]]])  # (S=2, B=2, C)
    expected = torch.tensor([1 - 0.2, 1 - 0.9], dtype=torch.float64)  # p̄ = [.6 .4], [.95 .05]
    torch.testing.assert_close(O.compute_score("margin", probs=probs), expected)
    torch.testing.assert_close(selective_score(probs, "margin"), expected)
    torch.testing.assert_close(uncertainty(probs, "margin"), expected.float())
    assert "margin" in O.probability_scores()


def test_a_score_of_logits_cannot_rank_for_selective_prediction():
    from bnn_nested.evaluation.selective import selective_score

    with pytest.raises(ValueError, match=r"^score: unknown score of probabilities 'energy'"):
        selective_score(torch.full((4, 3), 1 / 3), "energy")
    with pytest.raises(ValueError, match="takes must be one of probs, samples, logits"):
        O.register_score("bad", lambda x: x, takes="features")
    assert "bad" not in O.SCORES


def test_msp_hand():
    s = O.msp_score(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    assert torch.allclose(s, torch.tensor([0.1, 0.5]).double())
    # MC average first: p̄ = [0.5, 0.5].
    s_mc = O.msp_score(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))
    assert s_mc.item() == pytest.approx(0.5)


def test_max_logit_and_energy_hand():
    logits = torch.tensor([[5.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(O.max_logit_score(logits), torch.tensor([-5.0, -1.0]).double())
    assert O.energy_score(torch.zeros(1, 2)).item() == pytest.approx(-math.log(2))
    assert O.energy_score(torch.zeros(1, 2), temperature=2.0).item() == pytest.approx(
        -2 * math.log(2)
    )
    e = O.energy_score(logits)
    assert e[0].item() == pytest.approx(-math.log(math.exp(5) + 1))
    # (S, B, C): per-sample scores are averaged over S.
    stacked = torch.stack([torch.zeros(1, 2), torch.full((1, 2), 2.0)])
    assert O.energy_score(stacked).item() == pytest.approx(-math.log(2) - 1.0)
    assert O.max_logit_score(stacked).item() == pytest.approx(-1.0)


def test_energy_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        O.energy_score(torch.zeros(1, 2), temperature=0.0)


def test_entropy_scores_match_metrics():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 10, 3, generator=g), -1)
    assert torch.equal(O.entropy_score(probs), M.predictive_entropy(probs))
    assert torch.equal(O.mutual_information_score(probs), M.mutual_information(probs))
    assert torch.equal(O.expected_entropy_score(probs), M.expected_entropy(probs))


def _in_and_out(seed: int = 0):
    """In-distribution: confident, agreeing samples. OOD: samples that disagree, small logits."""
    g = torch.Generator().manual_seed(seed)
    s, b, c = 5, 40, 4
    cls_in = torch.randint(0, c, (b,), generator=g)
    logits_in = 8.0 * _one_hot(cls_in, c).expand(s, b, c) + 0.1 * torch.randn(s, b, c, generator=g)
    cls_out = torch.randint(0, c, (s, b), generator=g)
    logits_out = 1.5 * _one_hot(cls_out, c) + 0.1 * torch.randn(s, b, c, generator=g)
    return logits_in, logits_out


def _one_hot(idx: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(idx, c).float()


@pytest.mark.parametrize("name", BUILTIN)
def test_every_score_is_higher_for_ood(name):
    logits_in, logits_out = _in_and_out()
    s_in = O.compute_score(name, logits=logits_in)
    s_out = O.compute_score(name, logits=logits_out)
    assert s_in.shape == (40,) and s_out.shape == (40,)
    assert O.ood_metrics(s_in, s_out)["ood/auroc"] == pytest.approx(1.0)


def test_compute_score_dispatch_and_errors():
    logits = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(1))
    probs = torch.softmax(logits, -1)
    assert torch.allclose(
        O.compute_score("msp", probs=probs), O.compute_score("msp", logits=logits)
    )
    assert torch.equal(O.compute_score("energy", logits=logits), O.energy_score(logits))
    with pytest.raises(
        ValueError, match=r"--scores: unknown OOD score .odin.; accepted: msp, max_logit"
    ):
        O.compute_score("odin", probs=probs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs logits"):
        O.compute_score("max_logit", probs=probs)
    with pytest.raises(ValueError, match="needs probs or logits"):
        O.compute_score("entropy")
    with pytest.raises(ValueError, match="S, B, C"):
        O.compute_score("mutual_information", probs=probs[0])


# --------------------------------------------------------------------------- metrics


def test_ood_metrics_match_sklearn():
    g = np.random.default_rng(0)
    s_in = g.normal(0.0, 1.0, 300)
    s_out = g.normal(1.0, 1.5, 200)
    got = O.ood_metrics(torch.from_numpy(s_in), torch.from_numpy(s_out))
    y = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[s_in, s_out]
    assert set(got) == set(O.HIGHER_IS_BETTER)
    assert got["ood/auroc"] == pytest.approx(roc_auc_score(y, s))
    assert got["ood/aupr_out"] == pytest.approx(average_precision_score(y, s))
    assert got["ood/aupr_in"] == pytest.approx(average_precision_score(1 - y, -s))
    assert 0.0 < got["ood/fpr95"] < 1.0


def _fpr95_brute_force(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Literature FPR95 (ODIN, energy score): smallest threshold t (accept as in-distribution when
    score <= t) accepting >= 95% of in-distribution inputs; the share of OOD inputs accepted."""
    for t in np.sort(np.unique(np.r_[s_in, s_out])):
        if np.mean(s_in <= t) >= 0.95:
            return float(np.mean(s_out <= t))
    raise AssertionError("unreachable")


def _fpr95_in_brute_force(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Largest threshold t (flag score >= t) detecting >= 95% of OOD; share of in-dist flagged."""
    for t in np.sort(np.unique(np.r_[s_in, s_out]))[::-1]:
        if np.mean(s_out >= t) >= 0.95:
            return float(np.mean(s_in >= t))
    raise AssertionError("unreachable")


def test_fpr95_is_the_literatures_definition_hand():
    """Issue 28 item 4: ``ood/fpr95`` is the share of OOD inputs accepted at 95% in-distribution
    recall (Liang et al. 2018; Liu et al. 2020), not the share of in-distribution inputs flagged at
    95% OOD recall (now ``ood/fpr95_in``)."""
    s_in = np.arange(1.0, 21.0)  # accepting 19 of 20 (95%) needs t = 19
    s_out = np.array([0.5, 1.5, 19.5, 25.0])  # 0.5 and 1.5 are accepted at t = 19
    got = O.ood_metrics(s_in, s_out)
    assert got["ood/fpr95"] == pytest.approx(0.5)
    # flagging all 4 OOD inputs (95% of 4 is 4) needs t = 0.5, which flags every in-dist input
    assert got["ood/fpr95_in"] == pytest.approx(1.0)


def test_fpr95_in_hand():
    # OOD scores 1..20: detecting 19 of 20 (95%) needs threshold 2; in-dist 2.5 and 10.5 pass.
    s_out = np.arange(1.0, 21.0)
    s_in = np.array([0.5, 1.5, 2.5, 10.5])
    assert O.ood_metrics(s_in, s_out)["ood/fpr95_in"] == pytest.approx(0.5)
    # With 10 OOD scores, 95% means all 10: threshold 1, so 1.5, 2.5, 10.5 pass.
    assert O.ood_metrics(s_in, np.arange(1.0, 11.0))["ood/fpr95_in"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fpr95_matches_brute_force_with_ties(seed):
    g = np.random.default_rng(seed)
    s_in = g.integers(0, 12, 57).astype(float)
    s_out = g.integers(4, 20, 43).astype(float)
    got = O.ood_metrics(s_in, s_out)
    assert got["ood/fpr95"] == pytest.approx(_fpr95_brute_force(s_in, s_out))
    assert got["ood/fpr95_in"] == pytest.approx(_fpr95_in_brute_force(s_in, s_out))


@pytest.mark.parametrize("seed", [4, 5])
def test_fpr95_matches_sklearn_roc_with_in_distribution_positive(seed):
    """Read off scikit-learn's ROC curve with in-distribution positive and the scores negated
    (the convention of the ODIN and energy-score papers): FPR at the first TPR >= 0.95."""
    g = np.random.default_rng(seed)
    s_in, s_out = g.normal(0.0, 1.0, 400), g.normal(1.0, 1.0, 300)
    y_in = np.r_[np.ones(400), np.zeros(300)]
    fpr, tpr, _ = roc_curve(y_in, -np.r_[s_in, s_out])
    expected = fpr[np.argmax(tpr >= 0.95)]
    assert O.ood_metrics(s_in, s_out)["ood/fpr95"] == pytest.approx(expected, abs=1e-12)


def test_perfect_and_reversed_separation():
    s_in = torch.linspace(0.0, 1.0, 50)
    s_out = torch.linspace(2.0, 3.0, 30)
    perfect = O.ood_metrics(s_in, s_out)
    expected = {
        "ood/auroc": 1.0,
        "ood/aupr_in": 1.0,
        "ood/aupr_out": 1.0,
        "ood/fpr95": 0.0,
        "ood/fpr95_in": 0.0,
    }
    assert perfect == pytest.approx(expected, abs=1e-12)
    reversed_ = O.ood_metrics(s_out, s_in)
    assert reversed_["ood/auroc"] == pytest.approx(0.0, abs=1e-12)
    assert reversed_["ood/fpr95"] == pytest.approx(1.0)
    assert reversed_["ood/fpr95_in"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "s_in, s_out",
    [
        (np.array([]), np.array([1.0])),
        (np.ones((2, 2)), np.array([1.0])),
        (np.array([0.0, np.nan]), np.array([1.0])),
    ],
)
def test_ood_metrics_bad_inputs(s_in, s_out):
    with pytest.raises(ValueError):
        O.ood_metrics(s_in, s_out)
