"""Split conformal prediction sets per width, and sets nested across widths.

Scores (non-conformity, larger = the label fits worse; ``p`` = the MC-averaged, possibly
temperature-scaled probabilities ``p̄``; docs/METHODS.md#conformal-prediction-sets-per-width):

* ``thr`` (Sadinle et al. 2019, "LAC"): ``s(x, y) = 1 - p_y``;
* ``aps`` (Romano et al. 2020): ``s(x, y) = rho_x(y) + u p_y`` with ``rho_x(y)`` the total
  probability of the labels ranked strictly above ``y`` and ``u ~ U(0, 1)`` per example
  (``randomized=False``: ``u = 1``);
* ``raps`` (Angelopoulos et al. 2021): the APS score plus ``lam * max(0, o_x(y) - k_reg)``, ``o_x(y)``
  the 1-based rank of ``y``.

Split conformal (Vovk et al. 2005; Angelopoulos & Bates 2021): with ``n`` calibration scores,
``q = `` the ``ceil((n + 1)(1 - alpha))``-th smallest (``+inf`` when that exceeds ``n``), and
``C(x) = {y : s(x, y) <= q}``; then ``P(Y in C(X)) >= 1 - alpha`` for an exchangeable test point.

Nested sets (:func:`nested_thresholds`): with widths ``w_1 < ... < w_K`` and per-width scores
``s_k``, the joint score ``u_k(x, y) = max_{j <= k} s_j(x, y)`` is non-decreasing in ``k``. One
threshold ``q`` is calibrated on ``u_K`` (the widest, largest joint score); ``N_k(x) = {y : u_k(x,
y) <= q}``. Then ``N_K(x) ⊆ ... ⊆ N_1(x)`` for every input (a wider network never returns a larger
set) and ``P(Y in N_k(X)) >= P(Y in N_K(X)) >= 1 - alpha`` at every width.

Example::

    q = conformal_threshold(scores(val_probs, val_targets, "aps", u=u_val), alpha=0.1)
    sets = prediction_sets(test_probs, q, "aps", u=u_test)     # (N, C) bool
    set_metrics(sets, test_targets)  # {"coverage": .., "size": ..}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bnn_nested.config import SET_SCORES
from bnn_nested.evaluation.metrics import mean_probs

__all__ = [
    "SET_SCORES",
    "ConformalSets",
    "all_label_scores",
    "conformal_threshold",
    "conformal_sets",
    "label_scores",
    "nested_conformal_sets",
    "nested_thresholds",
    "prediction_sets",
    "set_metrics",
    "uniform_noise",
]

#: RAPS defaults (Angelopoulos et al. 2021 use ``lam`` in {0.001, .., 0.5}, ``k_reg`` ~ the rank
#: the classifier's top-k accuracy saturates at; for 10 classes ``k_reg = 1`` and ``lam = 0.01``).
RAPS_LAMBDA = 0.01
RAPS_KREG = 1


def _mean(probs: Tensor) -> Tensor:
    return mean_probs(probs)  # float64 (N, C)


def uniform_noise(n: int, seed: int = 0) -> Tensor:
    """``(n,)`` float64 ``U(0, 1)`` draws of the randomised APS/RAPS score, from a seeded generator."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _check_score(score: str) -> None:
    if score not in SET_SCORES:
        raise ValueError(f"score must be one of {', '.join(SET_SCORES)}; got {score!r}")


def all_label_scores(
    probs: Tensor,
    score: str = "thr",
    u: Tensor | None = None,
    lam: float = RAPS_LAMBDA,
    k_reg: int = RAPS_KREG,
) -> Tensor:
    """``(N, C)`` score of every label: ``s(x_i, c)`` (see module docstring).

    Args:
        probs: ``(N, C)`` or ``(S, N, C)`` (MC-averaged first).
        u: ``(N,)`` uniform draws for ``aps`` / ``raps`` (``None``: ``u = 1``, not randomised).
    """
    _check_score(score)
    p = _mean(probs)
    if score == "thr":
        return 1.0 - p
    n, c = p.shape
    order = torch.argsort(p, dim=1, descending=True, stable=True)
    sorted_p = p.gather(1, order)
    above = sorted_p.cumsum(1) - sorted_p  # rho: mass strictly above, in rank order
    uu = torch.ones(n, 1, dtype=p.dtype) if u is None else u.to(p.dtype).view(n, 1)
    ranked = above + uu * sorted_p
    if score == "raps":
        rank = torch.arange(1, c + 1, dtype=p.dtype).view(1, c)
        ranked = ranked + lam * (rank - k_reg).clamp_min(0)
    out = torch.empty_like(ranked)
    out.scatter_(1, order, ranked)
    return out


def label_scores(probs: Tensor, targets: Tensor, score: str = "thr", **kw) -> Tensor:
    """``(N,)`` score of the true label of each example (the calibration scores)."""
    s = all_label_scores(probs, score, **kw)
    return s.gather(1, targets.long().view(-1, 1)).squeeze(1)


def conformal_threshold(cal_scores: Tensor, alpha: float) -> float:
    """Split-conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` calibration
    scores (``+inf`` when that rank exceeds ``n``)."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = cal_scores.numel()
    if n == 0:
        raise ValueError("need at least one calibration score")
    k = math.ceil((n + 1) * (1 - alpha) - 1e-9)
    if k > n:
        return math.inf
    return float(torch.sort(cal_scores.double().flatten()).values[k - 1])


def prediction_sets(probs: Tensor, threshold: float, score: str = "thr", **kw) -> Tensor:
    """``(N, C)`` boolean sets ``{c : s(x, c) <= threshold}``."""
    return all_label_scores(probs, score, **kw) <= threshold


def set_metrics(sets: Tensor, targets: Tensor) -> dict[str, float]:
    """``coverage`` (fraction of examples whose label is in its set) and mean set ``size``."""
    covered = sets.gather(1, targets.long().view(-1, 1)).squeeze(1)
    return {
        "coverage": float(covered.double().mean()),
        "size": float(sets.sum(1).double().mean()),
    }


@dataclass
class ConformalSets:
    """Sets of every width on the test data: ``sets[k]`` is ``(N, C)`` bool for ``widths[k]``;
    ``thresholds[k]`` the calibrated ``q`` (the same for every width when nested)."""

    widths: list[float]
    thresholds: list[float]
    sets: list[Tensor]
    nested: bool

    def metrics(self, targets: Tensor) -> dict[float, dict[str, float]]:
        return {w: set_metrics(s, targets) for w, s in zip(self.widths, self.sets)}


def conformal_sets(
    cal_probs: Sequence[Tensor],
    cal_targets: Tensor,
    test_probs: Sequence[Tensor],
    widths: Sequence[float],
    alpha: float,
    score: str = "thr",
    seed: int = 0,
    **kw,
) -> ConformalSets:
    """Independent split-conformal sets per width (one threshold per width).

    ``cal_probs[k]`` / ``test_probs[k]``: ``(S, N, C)`` or ``(N, C)`` probabilities at ``widths[k]``.
    The randomised scores share one ``U(0, 1)`` draw per example across widths (seeded by ``seed``
    for calibration and ``seed + 1`` for the test data).
    """
    u_cal, u_test = _noise(score, cal_targets.numel(), _n(test_probs[0]), seed)
    thresholds, sets = [], []
    for pc, pt in zip(cal_probs, test_probs):
        q = conformal_threshold(label_scores(pc, cal_targets, score, u=u_cal, **kw), alpha)
        thresholds.append(q)
        sets.append(prediction_sets(pt, q, score, u=u_test, **kw))
    return ConformalSets([float(w) for w in widths], thresholds, sets, nested=False)


def _n(probs: Tensor) -> int:
    return probs.shape[-2]


def _noise(score: str, n_cal: int, n_test: int, seed: int) -> tuple[Tensor | None, Tensor | None]:
    if score == "thr":
        return None, None
    return uniform_noise(n_cal, seed), uniform_noise(n_test, seed + 1)


def _joint(scores: Sequence[Tensor]) -> list[Tensor]:
    """Running maximum over widths: ``u_k = max_{j <= k} s_j``."""
    out, run = [], None
    for s in scores:
        run = s if run is None else torch.maximum(run, s)
        out.append(run)
    return out


def nested_thresholds(
    cal_probs: Sequence[Tensor], cal_targets: Tensor, alpha: float, score: str = "thr", **kw
) -> float:
    """The one threshold of the nested sets: conformal quantile of ``max_k s_k(x_i, y_i)``."""
    cal = [label_scores(p, cal_targets, score, **kw) for p in cal_probs]
    return conformal_threshold(_joint(cal)[-1], alpha)


def nested_conformal_sets(
    cal_probs: Sequence[Tensor],
    cal_targets: Tensor,
    test_probs: Sequence[Tensor],
    widths: Sequence[float],
    alpha: float,
    score: str = "thr",
    seed: int = 0,
    **kw,
) -> ConformalSets:
    """Sets nested across widths (module docstring): ``N_k = {y : max_{j <= k} s_j <= q}`` with one
    ``q`` calibrated on the widest joint score; ``widths`` must be increasing."""
    if list(widths) != sorted(widths):
        raise ValueError(f"widths must be increasing for nested sets, got {list(widths)}")
    u_cal, u_test = _noise(score, cal_targets.numel(), _n(test_probs[0]), seed)
    q = nested_thresholds(cal_probs, cal_targets, alpha, score, u=u_cal, **kw)
    test = _joint([all_label_scores(p, score, u=u_test, **kw) for p in test_probs])
    return ConformalSets(
        [float(w) for w in widths], [q] * len(widths), [s <= q for s in test], True
    )
