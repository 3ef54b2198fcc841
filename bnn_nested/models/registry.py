"""Model registry: configs name models by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.nested import set_weight_noise, set_weight_prior
from bnn_nested.registry import Registry

#: name -> builder(model_cfg, ordering_kwargs, input_shape, num_classes) -> NestedModel
MODELS: Registry[Callable[..., NestedModel]] = Registry("model", field="model.name")


def register_model(name: str):
    """Decorator registering a builder ``f(model_cfg, ordering, input_shape, num_classes)``.

    A config reaches a model registered in a user module by listing that module under the
    config's top-level ``imports``. The builder is also run inside ``torch.device("meta")`` when a
    config is validated (shapes only, no memory): build tensors with factory functions
    (``torch.zeros``, layers' own init), not from data read at build time."""
    return MODELS.register(name)


def conv_model_kwargs(cfg: Any, ordering: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments every convolutional model takes from a ``ModelConfig``."""
    return {
        "groups": cfg.groups,
        "kept": cfg.kept,
        "norm": cfg.norm,
        "dropout": cfg.dropout,
        "weight_posterior": cfg.weight_posterior,
        "init_log_alpha": cfg.init_log_alpha,
        "ordering": ordering,
        "order_first": cfg.order_first,
        "order_classifier_input": cfg.order_classifier_input,
    }


def build_model(
    model_cfg: Any, ordering: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> NestedModel:
    """Build the model named ``model_cfg.name``; unknown names list the known ones."""
    model = MODELS[model_cfg.name](model_cfg, ordering, tuple(input_shape), num_classes)
    set_weight_prior(model, getattr(model_cfg, "weight_prior", "log_uniform"))
    return set_weight_noise(model, getattr(model_cfg, "weight_noise", "lrt"))
