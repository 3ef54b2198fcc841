"""Selective prediction: risk-coverage curve and AURC against brute force."""

import itertools
import math

import pytest
import torch

from bnn_nested.evaluation.selective import aurc, eaurc, risk_coverage, selective_score


def _brute_aurc_distinct(errors: list[int], scores: list[float]) -> float:
    """For each k, the error rate of the k examples with the lowest score; the mean over k."""
    n = len(errors)
    total = 0.0
    for k in range(1, n + 1):
        kept = sorted(range(n), key=lambda i: scores[i])[:k]
        total += sum(errors[i] for i in kept) / k
    return total / n


def _brute_aurc_ties(errors: list[int], scores: list[float]) -> float:
    """Average over every order consistent with the scores (all permutations, ties included)."""
    n = len(errors)
    vals = []
    for perm in itertools.permutations(range(n)):
        if any(scores[perm[i]] > scores[perm[i + 1]] for i in range(n - 1)):
            continue
        vals.append(sum(sum(errors[i] for i in perm[:k]) / k for k in range(1, n + 1)) / n)
    return sum(vals) / len(vals)


def test_aurc_equals_brute_force_distinct_scores():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 60, (1,), generator=g))
        errors = (torch.rand(n, generator=g) < 0.3).long()
        scores = torch.rand(n, generator=g, dtype=torch.float64)
        expected = _brute_aurc_distinct(errors.tolist(), scores.tolist())
        assert aurc(errors, scores) == pytest.approx(expected, abs=1e-12)


def test_aurc_equals_brute_force_with_ties():
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        errors = (torch.rand(7, generator=g) < 0.5).long()
        scores = torch.randint(0, 3, (7,), generator=g).double()  # many ties
        expected = _brute_aurc_ties(errors.tolist(), scores.tolist())
        assert aurc(errors, scores) == pytest.approx(expected, abs=1e-12)


def test_risk_coverage_by_hand_and_eaurc():
    errors = torch.tensor([0, 1, 0, 1])
    scores = torch.tensor([0.1, 0.2, 0.3, 0.4])
    cov, risk = risk_coverage(errors, scores)
    torch.testing.assert_close(cov, torch.tensor([0.25, 0.5, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(risk, torch.tensor([0, 0.5, 1 / 3, 0.5], dtype=torch.float64))
    # ideal order (errors last): risks 0, 0, 1/3, 1/2
    assert eaurc(errors, scores) == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4 - (1 / 3 + 0.5) / 4)
    assert eaurc(errors, errors.double()) == pytest.approx(0.0)


def test_selective_scores():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.4, 0.2]], dtype=torch.float64)
    torch.testing.assert_close(selective_score(p, "msp"), torch.tensor([0.3, 0.6], dtype=p.dtype))
    h = -(p * p.log()).sum(-1)
    torch.testing.assert_close(selective_score(p, "entropy"), h)
    with pytest.raises(ValueError, match="samples"):
        selective_score(p[None], "mutual_information")
    with pytest.raises(ValueError, match="score"):
        selective_score(p, "bogus")
    assert math.isfinite(aurc(torch.tensor([1]), torch.tensor([0.0])))
