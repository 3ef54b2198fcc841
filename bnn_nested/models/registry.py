"""Model registry: configs name models by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.nested import set_weight_noise

#: name -> builder(model_cfg, ordering_kwargs, input_shape, num_classes) -> NestedModel
MODELS: dict[str, Callable[..., NestedModel]] = {}


def register_model(name: str):
    """Decorator registering a builder ``f(model_cfg, ordering, input_shape, num_classes)``."""

    def deco(fn):
        if name in MODELS:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        return fn

    return deco


def conv_model_kwargs(cfg: Any, ordering: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments every convolutional model takes from a ``ModelConfig``."""
    return {
        "groups": cfg.groups,
        "frozen": cfg.frozen,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "weights": cfg.weights,
        "init_log_alpha": cfg.init_log_alpha,
        "ordering": ordering,
        "order_first": cfg.order_first,
        "order_classifier_input": cfg.order_classifier_input,
    }


def build_model(
    model_cfg: Any, ordering: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> NestedModel:
    """Build the model named ``model_cfg.name``; unknown names list the known ones."""
    try:
        builder = MODELS[model_cfg.name]
    except KeyError:
        raise ValueError(
            f"model.name: unknown model {model_cfg.name!r}; known models: {', '.join(sorted(MODELS))}"
        ) from None
    model = builder(model_cfg, ordering, tuple(input_shape), num_classes)
    return set_weight_noise(model, getattr(model_cfg, "weight_noise", "lrt"))
