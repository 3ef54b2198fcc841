"""Anytime inference: run the narrowest width, escalate uncertain examples to wider widths.

Stage ``i`` runs width ``widths[i]`` (increasing). An example leaves at stage ``i`` when its
uncertainty score (``"entropy"`` = predictive entropy ``H[p̄]``, ``"mutual_information"`` =
``H[p̄] - mean_s H[p_s]`` (needs ``samples > 1``), or ``"msp"`` = ``1 - max p̄``; see
:mod:`bnn_nested.evaluation.ood`, higher = more uncertain) is ``<= thresholds[i]``; otherwise it is
re-run at the next width. The last stage always answers. An example leaving at stage ``i`` costs
``sum_{j <= i} FLOPs(widths[j])`` (every stage it visited ran in full). Thresholds are calibrated on
validation data as quantiles of each stage's scores: quantile ``q`` sends the ``1 - q`` most uncertain
validation examples on.

Example:
    >>> thr = calibrate_thresholds(val_stage_probs, "entropy", quantile=0.8)
    >>> probs, exits = Cascade(model, [0.25, 0.5, 1.0], thr).predict(x)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from bnn_nested.evaluation.metrics import mean_probs
from bnn_nested.evaluation.ood import compute_score
from bnn_nested.evaluation.predict import predict, predict_loader
from bnn_nested.nn.model import NestedModel

CascadeScore = Literal["entropy", "mutual_information", "msp"]
CASCADE_SCORES: tuple[str, ...] = ("entropy", "mutual_information", "msp")


def _check(widths: Sequence[float], thresholds: Sequence[float], score: str) -> None:
    if score not in CASCADE_SCORES:
        raise ValueError(f"score must be one of {CASCADE_SCORES}, got {score!r}")
    if not widths or list(widths) != sorted(widths) or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be non-empty and strictly increasing, got {list(widths)}")
    if len(thresholds) != len(widths) - 1:
        raise ValueError(
            f"thresholds must have len(widths) - 1 = {len(widths) - 1} entries, got {len(thresholds)}"
        )


def uncertainty(probs: torch.Tensor, score: CascadeScore) -> torch.Tensor:
    """Score ``(N,)`` of probabilities ``(S, N, C)``; higher = more uncertain."""
    if score == "mutual_information" and probs.shape[0] < 2:
        raise ValueError("score 'mutual_information' needs samples > 1 (it is 0 for one sample)")
    return compute_score(score, probs=probs).float()


def stage_probs(
    model: NestedModel, loader, widths: Sequence[float], samples: int = 1
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Probabilities of every example at every width: ``([ (S, N, C) per width ], targets (N,))``."""
    out, targets = [], None
    for w in widths:
        p, targets = predict_loader(model, loader, w, samples)
        out.append(p)
    return out, targets


def calibrate_thresholds(
    probs_per_stage: Sequence[torch.Tensor], score: CascadeScore = "entropy", quantile: float = 0.8
) -> list[float]:
    """Per non-final stage, the ``quantile`` of the validation scores at that stage."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    return [float(torch.quantile(uncertainty(p, score), quantile)) for p in probs_per_stage[:-1]]


def simulate(
    probs_per_stage: Sequence[torch.Tensor],
    thresholds: Sequence[float],
    score: CascadeScore = "entropy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cascade outcome from precomputed stage probabilities.

    Returns:
        ``(probs (N, C), exit_stage (N,) long)``: the mean probabilities of the stage each example
        left at, and that stage's index.
    """
    n = probs_per_stage[0].shape[1]
    exit_stage = torch.full((n,), len(probs_per_stage) - 1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for i, t in enumerate(thresholds):
        leave = undecided & (uncertainty(probs_per_stage[i], score) <= t)
        exit_stage[leave] = i
        undecided &= ~leave
    stacked = torch.stack([mean_probs(p) for p in probs_per_stage])  # (stages, N, C)
    return stacked[exit_stage, torch.arange(n)], exit_stage


def mean_flops(exit_stage: torch.Tensor, flops_per_width: Sequence[float]) -> float:
    """Mean FLOPs per example: an example leaving at stage ``i`` paid stages ``0..i``."""
    cum = torch.tensor(flops_per_width, dtype=torch.float64).cumsum(0)
    return float(cum[exit_stage].mean())


def cascade_metrics(
    probs_per_stage: Sequence[torch.Tensor],
    targets: torch.Tensor,
    thresholds: Sequence[float],
    flops_per_width: Sequence[float],
    score: CascadeScore = "entropy",
    n_bins: int = 15,
) -> dict[str, float]:
    """``cls/acc``, ``cal/ece``, ``cost/flops`` (mean per example) and the fraction leaving per stage."""
    from bnn_nested.evaluation.metrics import accuracy, ece

    probs, exits = simulate(probs_per_stage, thresholds, score)
    row = {
        "cls/acc": accuracy(probs, targets),
        "cal/ece": ece(probs, targets, n_bins),
        "cost/flops": mean_flops(exits, flops_per_width),
    }
    for i in range(len(probs_per_stage)):
        row[f"exit/{i}"] = float((exits == i).double().mean())
    return row


class Cascade:
    """Online cascade over a batch: only the undecided examples are re-run at the next width.

    Args:
        model: nested model (used in eval; Monte-Carlo mode when ``samples > 1``).
        widths: strictly increasing widths; ``thresholds``: one per non-final stage.
        score: ``"entropy"``, ``"mutual_information"`` or ``"msp"``.

    Example:
        >>> probs, exits = Cascade(model, [0.25, 1.0], [0.3]).predict(x)   # (B, C), (B,)
    """

    def __init__(
        self,
        model: NestedModel,
        widths: Sequence[float],
        thresholds: Sequence[float],
        score: CascadeScore = "entropy",
        samples: int = 1,
    ) -> None:
        _check(widths, thresholds, score)
        self.model, self.widths, self.thresholds = model, list(widths), list(thresholds)
        self.score, self.samples = score, samples

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(x.shape[0], device=x.device)
        out: torch.Tensor | None = None
        exits = torch.full((x.shape[0],), len(self.widths) - 1, dtype=torch.long, device=x.device)
        for i, w in enumerate(self.widths):
            p = predict(self.model, x[idx], w, self.samples)
            pm = mean_probs(p)
            if out is None:
                out = pm.new_zeros((x.shape[0], pm.shape[-1]))
            if i == len(self.widths) - 1:
                out[idx] = pm.to(out)
                break
            leave = uncertainty(p, self.score) <= self.thresholds[i]
            out[idx[leave]] = pm[leave].to(out)
            exits[idx[leave]] = i
            idx = idx[~leave]
            if len(idx) == 0:
                break
        assert out is not None
        return out, exits
