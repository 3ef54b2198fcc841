"""Models from outside the zoo, nested by :func:`~bnn_nested.nest.nestify`.

Config forms (validated by ``bnn_nested.config.ModelConfig``):

```yaml
model: {name: torchvision, arch: resnet18}                 # any torchvision classification arch
model: {name: import, target: "my_pkg.models:build_net", kwargs: {depth: 4}}
model: {name: vit, hidden: [64, 128], variant: "4x4"}     # the small ViT of bnn_nested.models.vit
```

``import`` calls the named factory (``module:callable``, resolved with ``importlib`` from what is
installed / on ``sys.path``; no file paths) with ``kwargs`` and ``num_classes``, so a config that
names it runs that code, as Hydra's ``_target_`` does: only use configs you trust.

Every builder receives the data's input shape. Models are built on the meta device when a config is
validated (no memory, no conversion), and converted for real otherwise.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

import torch
from torch import nn

from bnn_nested.io import first_line
from bnn_nested.models.registry import register_model
from bnn_nested.nest import NestifiedModel, WidthStructure, nestify
from bnn_nested.nest.model import replace_module
from bnn_nested.nn.utils import conv_args


def torchvision_archs() -> list[str]:
    """Classification architectures of ``torchvision.models``."""
    import torchvision  # deferred: heavy (torchvision), only these builders need it

    return list(torchvision.models.list_models(module=torchvision.models))


def _on_meta() -> bool:
    return torch.empty(0).device.type == "meta"


def _adapt_input_channels(net: nn.Module, channels: int) -> None:
    """Replace the first ``Conv2d`` if it expects another number of input channels (random init)."""
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels != channels and m.groups == 1:
                replace_module(net, name, nn.Conv2d(**{**conv_args(m), "in_channels": channels}))
            return


def check_classifier_output(net: nn.Module, example: torch.Tensor, num_classes: int) -> None:
    """One line naming ``model`` when ``net`` does not map ``example`` (a batch of 2) to a tensor of
    shape ``(2, num_classes)``: one logit per class, which the objective and every metric assume
    (a wrong shape otherwise surfaced as cross-entropy's 'spatial targets' message)."""
    with torch.no_grad():
        out = net.eval()(example)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (example.shape[0], num_classes):
        raise ValueError(
            f"model: the network maps a batch of {example.shape[0]} inputs of shape "
            f"{tuple(example.shape[1:])} to {shape}; expected ({example.shape[0]}, {num_classes}): "
            "one logit per class"
        )


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)``, or ``(1, s, s)`` for a flat square input of ``s * s`` features."""
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 1:
        s = round(input_shape[0] ** 0.5)
        if s * s == input_shape[0]:
            return (1, s, s)
    raise ValueError(f"input_shape must be (C, H, W) or a flat square image, got {input_shape}")


def nest_plain(
    cfg: Any,
    ordering: dict[str, Any],
    net: nn.Module,
    input_shape: tuple[int, ...],
    num_classes: int | None = None,
) -> NestifiedModel:
    """Nest a plain network built from a config (or, on the meta device, wrap it unconverted);
    with ``num_classes``, first check that it outputs one logit per class."""
    if _on_meta():
        return NestifiedModel(net, WidthStructure(), ordering)
    # a private generator: converting must not move the global random stream (a run's masks)
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        if num_classes is not None:
            check_classifier_output(net, example, num_classes)
        return nestify(
            net.eval(),
            example,
            groups=cfg.groups,
            kept=cfg.kept,
            weight_posterior=cfg.weight_posterior,
            # MOPED (Krishnan et al. 2020): std = delta |w|, i.e. alpha = delta^2 in N(w, alpha w^2)
            init_log_alpha=2 * math.log(cfg.moped_delta) if cfg.moped_delta else cfg.init_log_alpha,
            exclude=tuple(cfg.exclude),
            heads=cfg.order_heads,
            ordering=ordering,
        ).train()
    except RuntimeError as err:  # shape errors of the user's network on this data
        first = first_line(err)
        raise ValueError(
            f"model: cannot run on inputs of shape {tuple(input_shape)}: {first}"
        ) from None


@register_model("torchvision", options=("kwargs",))
def _build_torchvision(cfg, ordering, input_shape, num_classes) -> NestifiedModel:
    import torchvision  # deferred: heavy (torchvision), only this path needs it

    archs = torchvision_archs()
    if cfg.arch not in archs:
        raise ValueError(
            f"model.arch: unknown torchvision architecture {cfg.arch!r}; known: {', '.join(archs)}"
        )
    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    if cfg.arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)
    try:
        net = torchvision.models.get_model(cfg.arch, weights=None, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.kwargs: {err}") from None
    shape = image_shape(input_shape)
    _adapt_input_channels(net, shape[0])
    return nest_plain(cfg, ordering, net, shape)


def resolve_target(target: str):
    """``"package.module:attribute"`` -> the attribute (one-line error otherwise)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"model.target: cannot import module {module_name!r} ({err})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model.target: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"model.target: {target!r} is not callable")
    return obj


@register_model("import", options=("kwargs",))
def _build_import(cfg, ordering, input_shape, num_classes) -> NestifiedModel:
    factory = resolve_target(cfg.target)
    kwargs = dict(cfg.kwargs)
    kwargs.setdefault("num_classes", num_classes)
    try:
        net = factory(**kwargs)
    except TypeError as err:
        raise ValueError(f"model.kwargs: {cfg.target}: {err}") from None
    if not isinstance(net, nn.Module):
        raise ValueError(
            f"model.target: {cfg.target!r} returned {type(net).__name__}, not an nn.Module"
        )
    return nest_plain(cfg, ordering, net, tuple(input_shape), num_classes)
