"""Zoo models as users get them: a config's ``model`` section built by ``build_model`` (nestify)."""

from __future__ import annotations

from typing import Any

from bnn_nested.config import ModelConfig
from bnn_nested.models import build_model
from bnn_nested.nest import NestifiedModel


def zoo(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    ordering: dict[str, Any] | None = None,
    **model: Any,
) -> NestifiedModel:
    """``build_model(ModelConfig(name=name, **model), ordering, input_shape, num_classes)``."""
    return build_model(ModelConfig(name=name, **model), ordering or {}, input_shape, num_classes)


def mlp(
    in_features: int,
    num_classes: int,
    hidden: list[int],
    groups: int = 4,
    kept: int = 1,
    ordering: dict[str, Any] | None = None,
    **model: Any,
) -> NestifiedModel:
    """The config's ``mlp`` (every hidden layer ordered, the classifier's outputs whole)."""
    return zoo(
        "mlp",
        (in_features,),
        num_classes,
        ordering,
        hidden=hidden,
        groups=groups,
        kept=kept,
        **model,
    )
