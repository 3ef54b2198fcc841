"""Per-layer width allocation from learned keep probabilities, and its accuracy-vs-FLOPs front.

Instead of one global width, dimension ``l`` keeps its ``F_l`` kept groups plus the ordered groups
whose learned keep probability ``P(b_l >= k) >= t`` (Cui et al. 2021: the ordering posterior learns how many
groups each layer needs). Keep probabilities are non-increasing in ``k``, so this keeps a prefix. At
least one group is always kept. Sweeping ``t`` traces a family of sub-networks; their accuracy
against FLOPs (= 2 x MACs per example) is compared with uniform widths.

Example::

    alloc = threshold_allocation(model, 0.9)      # {"features.0": 11, ...} per dimension
    logits = model(x, width=alloc)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bnn_nested.cost import count_flops
from bnn_nested.evaluation.metrics import classification_report
from bnn_nested.evaluation.plots import metric_vs_x
from bnn_nested.evaluation.prediction import predict_loader
from bnn_nested.nest import NestifiedModel
from bnn_nested.nn.model import Width


def _prefix(keep: torch.Tensor, kept: int, threshold: float) -> int:
    ok = (keep >= threshold).tolist() + [False]
    return max(1, kept + ok.index(False))  # leading run (keep is non-increasing up to rounding)


def threshold_allocation(model: NestifiedModel, threshold: float) -> dict[str, int]:
    """Groups per dimension: ``F + #{k : P(b >= k) >= threshold}`` (prefix), at least 1.

    Every layer on a dimension gets the same count (the main branches and the shortcut of a
    residual stream stay equal: they are one dimension).

    Args:
        threshold: ``t``; ``t <= 0`` keeps every group, ``t > 1`` keeps only the kept groups.

    Returns:
        ``{dimension: n_groups}`` accepted by ``model.width(...)``.
    """
    return {
        d.name: _prefix(model.unit(d.name).keep_probs().detach(), d.kept, threshold)
        for d in model.structure
    }


@dataclass
class AllocationPoint:
    """One sub-network: its label, width (float or per-layer dict), FLOPs and validation metrics."""

    label: str
    width: Width
    flops: int
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        w = self.width if isinstance(self.width, float) else dict(self.width)
        return {"label": self.label, "width": w, "flops": self.flops, "metrics": self.metrics}


@torch.no_grad()
def evaluate_width(
    model: NestifiedModel, loader, width: Width, samples: int = 1, n_bins: int = 15
) -> dict[str, float]:
    """Classification/calibration metrics (``cls/acc``, ``cal/ece``, ...) at a (per-layer) width."""

    probs, targets = predict_loader(model, loader, width, samples)
    return classification_report(probs, targets, n_bins=n_bins)


def sweep(
    model: NestifiedModel,
    loader,
    example: torch.Tensor,
    thresholds: Sequence[float],
    uniform_widths: Sequence[float],
    samples: int = 1,
) -> tuple[list[AllocationPoint], list[AllocationPoint]]:
    """Evaluate threshold allocations and uniform widths: ``(allocated, uniform)`` point lists.

    Duplicate allocations (several ``t`` giving the same groups) are evaluated once.
    """

    allocated: list[AllocationPoint] = []
    seen: dict[tuple, AllocationPoint] = {}
    for t in thresholds:
        alloc = threshold_allocation(model, t)
        key = tuple(sorted(alloc.items()))
        if key in seen:
            continue
        p = AllocationPoint(
            f"t={t:g}",
            alloc,
            count_flops(model, example[:1], alloc),
            evaluate_width(model, loader, alloc, samples),
        )
        seen[key] = p
        allocated.append(p)
    uniform = [
        AllocationPoint(
            f"r={w:g}",
            float(w),
            count_flops(model, example[:1], float(w)),
            evaluate_width(model, loader, float(w), samples),
        )
        for w in uniform_widths
    ]
    return allocated, uniform


def pareto_front(points: Sequence[AllocationPoint], key: str = "cls/acc") -> list[AllocationPoint]:
    """Points not dominated in (fewer FLOPs, higher ``key``), sorted by FLOPs."""
    front = []
    best = -float("inf")
    for p in sorted(points, key=lambda p: (p.flops, -p.metrics[key])):
        if p.metrics[key] > best:
            front.append(p)
            best = p.metrics[key]
    return front


def plot_sweep(
    allocated: Sequence[AllocationPoint],
    uniform: Sequence[AllocationPoint],
    path: str | Path,
    key: str = "cls/acc",
) -> Path:
    """Accuracy (or ``key``) vs FLOPs for both families (``metric_vs_x``)."""

    series = {
        "per-layer (keep prob >= t)": (
            [p.flops for p in allocated],
            [p.metrics[key] for p in allocated],
        ),
        "uniform width": ([p.flops for p in uniform], [p.metrics[key] for p in uniform]),
    }
    return metric_vs_x(
        series,
        "FLOPs per example (2 x MACs)",
        key,
        path,
        title="per-layer allocation vs uniform widths",
    )


__all__ = [
    "AllocationPoint",
    "evaluate_width",
    "pareto_front",
    "plot_sweep",
    "sweep",
    "threshold_allocation",
]
