"""Evaluate a nested model at several widths: the per-width report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from bnn_nested.evaluation.metrics import classification_report
from bnn_nested.evaluation.predict import predict_loader
from bnn_nested.nn.model import NestedModel


@dataclass
class Report:
    """Metrics per width: ``rows[width] = {"cls/acc": .., "cls/nll": .., "cal/ece": .., ...}``."""

    rows: dict[float, dict[str, float]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "widths": {f"{w:g}": m for w, m in sorted(self.rows.items())}}

    def table(self, keys: tuple[str, ...] = ("cls/acc", "cls/nll", "cal/ece")) -> str:
        """A plain-text table, one row per width."""
        keys = tuple(k for k in keys if any(k in m for m in self.rows.values()))
        head = f"{'width':>6} " + " ".join(f"{k:>10}" for k in keys)
        lines = [head, "-" * len(head)]
        for w, m in sorted(self.rows.items()):
            lines.append(f"{w:>6.3g} " + " ".join(f"{m.get(k, float('nan')):>10.4f}" for k in keys))
        return "\n".join(lines)


def evaluate_widths(
    model: NestedModel,
    dataset,
    widths: list[float],
    samples: int = 1,
    n_bins: int = 15,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
) -> Report:
    """Accuracy, NLL, Brier, ECE ... at each width (``samples`` Monte-Carlo passes each).

    Example:
        >>> report = evaluate_widths(model, splits.test, [0.25, 0.5, 1.0])
        >>> print(report.table())
    """
    loader = DataLoader(dataset, batch_size=batch_size)
    report = Report(meta={"samples": samples, "ece_bins": n_bins, "n": len(dataset)})
    for w in widths:
        probs, targets = predict_loader(model, loader, w, samples, device)
        report.rows[float(w)] = classification_report(probs, targets, n_bins=n_bins)
    return report
