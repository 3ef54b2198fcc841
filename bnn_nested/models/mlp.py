"""Nested multi-layer perceptron."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnn_nested.config import DEFAULT_INIT_LOG_ALPHA
from bnn_nested.nn import NestedBatchNorm1d, NestedLinear, NestedModel, OrderingUnit


class NestedMLP(NestedModel):
    """MLP whose hidden layers are ordered: ``Linear -> [BN] -> ReLU -> OrderingUnit`` per layer.

    Args:
        in_features: input size (inputs of other shapes are flattened).
        num_classes: output size; the classifier's outputs are never truncated.
        hidden: hidden sizes; ``groups`` must divide each.
        groups, kept: ordering groups ``G`` and always-kept groups ``F`` per hidden layer.
        ordering: keyword arguments for every :class:`~bnn_nested.nn.OrderingUnit`.
        norm: ``"none"`` or ``"batch"`` (batch norm before the activation).
        dropout: dropout probability after each hidden layer (0 = none).
        weight_posterior: ``"point"`` or ``"gaussian"`` (multiplicative Gaussian noise on every layer,
            see :mod:`bnn_nested.nn.bayes`); ``init_log_alpha`` is its initial log noise ratio.

    Example:
        >>> model = NestedMLP(64, 10, hidden=[128, 128], groups=16, kept=2)
        >>> model(torch.randn(4, 64), width=0.5).shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: list[int],
        groups: int = 16,
        kept: int = 2,
        ordering: dict[str, Any] | None = None,
        norm: str = "none",
        dropout: float = 0.0,
        weight_posterior: str = "point",
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
    ) -> None:
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"norm must be 'none' or 'batch', got {norm!r}")
        ordering = dict(ordering or {})
        wkw = {"weight_posterior": weight_posterior, "init_log_alpha": init_log_alpha}
        layers: list[nn.Module] = []
        self.pairs: list[tuple[int, int]] = []  # (layer index, ordering unit index)
        width_in = in_features
        for h in hidden:
            layers.append(
                NestedLinear(
                    width_in, h, bias=norm == "none", order_groups=groups, kept=kept, **wkw
                )
            )
            lin = len(layers) - 1
            if norm == "batch":
                layers.append(NestedBatchNorm1d(h))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers.append(OrderingUnit(h, groups, kept, **ordering))
            self.pairs.append((lin, len(layers) - 1))
            width_in = h
        self.features = nn.Sequential(*layers)
        self.classifier = NestedLinear(width_in, num_classes, ordered=False, **wkw)

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))

    def weight_kl_pairs(self):
        pairs = [(self.features[i], self.features[j]) for i, j in self.pairs]
        return pairs + [(self.classifier, None)]
