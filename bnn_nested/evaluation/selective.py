"""Selective prediction: abstain on the most uncertain inputs; risk-coverage curve and AURC.

Sort the ``N`` examples by an uncertainty score, most certain first. At coverage ``k / N`` the
classifier answers the ``k`` most certain examples; the selective risk is their error rate
``r_k = (errors among them) / k``. The risk-coverage curve is ``(k / N, r_k)``, ``k = 1..N``, and

    AURC = (1 / N) sum_k r_k

(Geifman & El-Yaniv 2017, "Selective Classification for Deep Neural Networks"; Geifman et al. 2019
for AURC / E-AURC). Ties in the score are broken by averaging over their orders: inside a block of
tied examples the expected error count of the first ``j`` is ``j`` times the block's error rate.
E-AURC subtracts the AURC of the ideal ordering (every error after every correct answer).

Scores (higher = more uncertain, so abstained on first): any score of probabilities in
:data:`bnn_nested.evaluation.ood.SCORES` (the same functions OOD detection uses): ``msp`` =
``1 - max_c p̄_c``, ``entropy`` = ``H[p̄]``, ``mutual_information`` (needs ``S > 1`` samples),
``expected_entropy``, and those a user module registers (:func:`~bnn_nested.evaluation.ood.register_score`).

Example::

    cov, risk = risk_coverage(errors, uncertainty)
    aurc(errors, uncertainty)
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnn_nested.evaluation.ood import check_scores, compute_score

__all__ = ["aurc", "eaurc", "risk_coverage", "selective_score"]


def selective_score(probs: Tensor, score: str = "msp") -> Tensor:
    """``(N,)`` uncertainty of ``(S, N, C)`` / ``(N, C)`` probabilities; higher = abstain first.
    ``score``: a score of probabilities in :data:`~bnn_nested.evaluation.ood.SCORES`."""
    check_scores([score], "score", probabilities=True)
    if score == "mutual_information" and (probs.ndim != 3 or probs.shape[0] < 2):
        raise ValueError("score 'mutual_information' needs samples > 1 (it is 0 for one sample)")
    return compute_score(score, probs=probs)


def risk_coverage(errors: Tensor, uncertainty: Tensor) -> tuple[Tensor, Tensor]:
    """``(coverage (N,), risk (N,))`` float64: coverage ``k / N`` and selective risk ``r_k``.

    Args:
        errors: ``(N,)`` 0/1 (bool or numbers): 1 where the prediction is wrong.
        uncertainty: ``(N,)`` score, higher = less certain (answered last).
    """
    e = errors.double().flatten()
    s = uncertainty.double().flatten()
    n = e.numel()
    if n == 0 or s.numel() != n:
        raise ValueError(
            f"errors and uncertainty must be non-empty and equal length, got {n}, {s.numel()}"
        )
    order = torch.argsort(s, stable=True)
    s, e = s[order], e[order]
    # tie blocks: expected cumulative errors grow linearly inside each block
    _, counts = torch.unique_consecutive(s, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    block_err = torch.zeros(len(counts), dtype=torch.float64).index_add_(
        0, torch.repeat_interleave(torch.arange(len(counts)), counts), e
    )
    before = block_err.cumsum(0) - block_err  # errors in earlier blocks
    k = torch.arange(1, n + 1, dtype=torch.float64)
    block = torch.repeat_interleave(torch.arange(len(counts)), counts)
    j = k - starts[block].double()  # position inside the block, 1-based
    cum_err = before[block] + j * block_err[block] / counts[block].double()
    return k / n, cum_err / k


def aurc(errors: Tensor, uncertainty: Tensor) -> float:
    """Area under the risk-coverage curve ``(1 / N) sum_k r_k`` (lower is better)."""
    return float(risk_coverage(errors, uncertainty)[1].mean())


def eaurc(errors: Tensor, uncertainty: Tensor) -> float:
    """Excess AURC: AURC minus that of the ideal ordering (errors answered last)."""
    e = errors.double().flatten()
    return aurc(e, uncertainty) - aurc(e, e)
