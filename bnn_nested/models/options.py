"""The options every hand-nested convolutional model takes, defined once.

``NestedLeNet``, ``NestedVGG`` and ``NestedResNet`` take their architecture arguments and then these
keyword options (``**options``); each model has its own defaults (:attr:`NestOptions.groups` is 32
for VGG-11-wide, norms default to batch norm except in LeNet).

Example:
    >>> NestOptions.resolve({"groups": 16}, {"groups": 4, "kept": 1}).groups
    4
    >>> NestOptions.resolve({}, {"group": 4})
    Traceback (most recent call last):
    ...
    TypeError: unknown option 'group'; accepted: groups, kept, norm, dropout, weight_posterior, init_log_alpha, ordering, order_first, order_classifier_input
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from bnn_nested.config import DEFAULT_INIT_LOG_ALPHA

__all__ = ["NestOptions"]


@dataclass(frozen=True)
class NestOptions:
    """Options of a hand-nested model.

    Attributes:
        groups: channel groups ``G`` of every ordered layer (divides its width).
        kept: leading groups ``F`` always kept.
        norm: ``"batch"`` (nested batch norm, statistics per width) or ``"none"``.
        dropout: dropout probability after hidden layers (``0``: none).
        weight_posterior: ``"point"`` or ``"gaussian"`` weights.
        init_log_alpha: initial ``log alpha`` of Gaussian weights.
        ordering: keyword arguments of every :class:`~bnn_nested.nn.OrderingUnit`.
        order_first: order the first layer's outputs too.
        order_classifier_input: order the input of the classifier (the last hidden layer).
    """

    groups: int = 16
    kept: int = 2
    norm: str = "batch"
    dropout: float = 0.0
    weight_posterior: str = "point"
    init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA
    ordering: dict[str, Any] | None = None
    order_first: bool = False
    order_classifier_input: bool = True

    @classmethod
    def resolve(cls, defaults: dict[str, Any], options: dict[str, Any]) -> NestOptions:
        """The model's ``defaults`` overridden by the caller's ``options``; unknown names raise a
        one-line ``TypeError`` (as an unexpected keyword argument would)."""
        names = [f.name for f in fields(cls)]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise TypeError(f"unknown option {unknown[0]!r}; accepted: {', '.join(names)}")
        return cls(**{**defaults, **options})
