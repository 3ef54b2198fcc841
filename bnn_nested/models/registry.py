"""Model registry: configs name models by string."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnn_nested.nest import NestifiedModel
from bnn_nested.nn.nested import set_weight_noise, set_weight_prior
from bnn_nested.registry import Registry

#: name -> builder(model_cfg, ordering_kwargs, input_shape, num_classes) -> NestifiedModel
MODELS: Registry[Callable[..., NestifiedModel]] = Registry("model", field="model.name")
#: the ``model`` keys that only some models read, with the value meaning "not given" (``arch`` and
#: ``target`` belong to the names ``torchvision`` and ``import`` and are checked by the config itself)
MODEL_SPECIFIC: dict[str, Any] = {"variant": None, "kwargs": {}}
#: name -> the model-specific keys its builder reads (models registered without ``options`` are
#: not checked)
MODEL_OPTIONS: dict[str, frozenset[str]] = {}


def register_model(name: str, options: tuple[str, ...] | None = None):
    """Decorator registering a builder ``f(model_cfg, ordering, input_shape, num_classes)``.

    ``options``: the model-specific keys of :data:`MODEL_SPECIFIC` the builder reads (e.g.
    ``("variant",)``); a config giving this model another one is refused in one line. ``None``
    (the default) declares nothing and checks nothing.

    A config reaches a model registered in a user module by listing that module under the
    config's top-level ``imports``. The builder is also run inside ``torch.device("meta")`` when a
    config is validated (shapes only, no memory): build tensors with factory functions
    (``torch.zeros``, layers' own init), not from data read at build time."""
    if options is not None:
        unknown = set(options) - set(MODEL_SPECIFIC)
        if unknown:
            raise ValueError(
                f"register_model options: {sorted(unknown)} are not model-specific keys "
                f"(accepted: {sorted(MODEL_SPECIFIC)})"
            )
        MODEL_OPTIONS[name] = frozenset(options)
    return MODELS.register(name)


def check_model_options(model_cfg: Any) -> None:
    """Refuse a model-specific key (``variant``, ``kwargs``) given to a model that does not read it: ``ValueError`` naming the key and the models it applies to."""
    allowed = MODEL_OPTIONS.get(model_cfg.name)
    if allowed is None:
        return
    for key, unset in MODEL_SPECIFIC.items():
        if key not in allowed and getattr(model_cfg, key, unset) != unset:
            users = sorted(n for n, opts in MODEL_OPTIONS.items() if key in opts)
            raise ValueError(
                f"model.{key}: not read by model {model_cfg.name!r} "
                f"(applies to: {', '.join(users) or 'no built-in model'})"
            )


def build_model(
    model_cfg: Any, ordering: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
) -> NestifiedModel:
    """Build the model named ``model_cfg.name``; unknown names list the known ones. (A new run's
    config is checked by :func:`check_model_options` first; a saved run is rebuilt as it was.)"""
    model = MODELS[model_cfg.name](model_cfg, ordering, tuple(input_shape), num_classes)
    set_weight_prior(model, getattr(model_cfg, "weight_prior", "log_uniform"))
    return set_weight_noise(model, getattr(model_cfg, "weight_noise", "lrt"))
