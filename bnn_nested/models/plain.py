"""The zoo as plain PyTorch definitions, nested by :func:`~bnn_nested.nest.nestify` from configs.

``mlp``, ``lenet``, ``vgg`` and ``resnet`` in a config build these plain networks and nest them: the
width structure (which layers each ordering unit orders, the residual streams, the norm-followed
weights) is found by the same graph analysis as for any user network, never listed by hand. A
residual stream is one dimension (one unit per stage), so every block of a stage shares its width.

A nestified model masks at run time; a narrow width gets its speed from export
(:func:`~bnn_nested.deploy.export.export_width`, the physically sliced network).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.models.external import image_shape, nest_plain
from bnn_nested.models.registry import register_model

#: Default ``(conv1, conv2, fc)`` widths of LeNet.
LENET_DEFAULT = (16, 32, 256)
#: VGG plans: output channels of each 3x3 conv, ``"M"`` a 2x2 max pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "11-wide": [96, "M", 192, "M", 384, 384, "M", 768, 768, "M", 768, 768, "M"],
}
#: ResNet variants: stem width and ``(width, blocks)`` per stage.
RESNET_CONFIGS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "20": (16, [(16, 3), (32, 3), (64, 3)]),
    "18": (64, [(64, 2), (128, 2), (256, 2), (512, 2)]),
}
NORMS = ("none", "batch")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def _act(norm: str, dropout: float, channels: int, dims: int) -> list[nn.Module]:
    mods: list[nn.Module] = []
    if norm == "batch":
        mods.append(nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels))
    mods.append(nn.ReLU())
    if dropout > 0:
        mods.append(nn.Dropout(dropout))
    return mods


class MLP(nn.Module):
    """``[Linear -> [BN] -> ReLU -> [Dropout]] x n -> Linear`` on flattened inputs."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: list[int],
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_norm(norm)
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h, bias=norm == "none"), *_act(norm, dropout, h, 1)]
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))


class ConvBlock(nn.Sequential):
    """``Conv2d -> [BatchNorm2d] -> ReLU -> [Dropout]``."""

    def __init__(
        self, c_in: int, c_out: int, k: int, stride: int, pad: int, norm: str, dropout: float
    ) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, pad, bias=norm == "none"),
            *_act(norm, dropout, c_out, 2),
        )


class LeNet(nn.Module):
    """``conv5x5 -> pool -> conv5x5 -> pool -> fc -> classifier`` ('same' padding, ReLU)."""

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        channels: tuple[int, int, int] = LENET_DEFAULT,
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_norm(norm)
        c, h, w = self.input_chw = input_shape
        c1, c2, fc = channels
        if h // 4 < 1 or w // 4 < 1:
            raise ValueError(f"input_shape: lenet needs images of at least 4x4, got {input_shape}")
        self.conv1 = ConvBlock(c, c1, 5, 1, 2, norm, dropout)
        self.conv2 = ConvBlock(c1, c2, 5, 1, 2, norm, dropout)
        self.fc = nn.Sequential(
            nn.Linear(c2 * (h // 4) * (w // 4), fc, bias=norm == "none"),
            *_act(norm, dropout, fc, 1),
        )
        self.classifier = nn.Linear(fc, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_chw)
        h = F.max_pool2d(self.conv2(F.max_pool2d(self.conv1(x), 2)), 2)
        return self.classifier(self.fc(h.flatten(1)))


class VGG(nn.Module):
    """VGG plan (``VGG_CONFIGS``) of 3x3 conv blocks and 2x2 max pools (skipped at 1x1), then a
    linear classifier on the flattened features."""

    def __init__(
        self,
        plan: list[int | str],
        input_shape: tuple[int, int, int],
        num_classes: int,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_norm(norm)
        c, h, w = self.input_chw = input_shape
        mods: list[nn.Module] = []
        for v in plan:
            if v == "M":
                if min(h, w) >= 2:
                    mods.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            mods.append(ConvBlock(c, int(v), 3, 1, 1, norm, dropout))
            c = int(v)
        if c == self.input_chw[0]:
            raise ValueError("layers must contain at least one convolution")
        self.features = nn.Sequential(*mods)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_chw)
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` (He et al. 2016)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.block1 = ConvBlock(c_in, c_out, 3, stride, 1, norm, 0.0)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=norm == "none")
        self.bn2 = nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=norm == "none"),
                nn.BatchNorm2d(c_out) if norm == "batch" else nn.Identity(),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv2(self.block1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (``RESNET_CONFIGS``: "20", "18"), no initial max pool."""

    def __init__(
        self,
        variant: str,
        input_shape: tuple[int, int, int],
        num_classes: int,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if variant not in RESNET_CONFIGS:
            raise ValueError(f"variant must be one of {tuple(RESNET_CONFIGS)}, got {variant!r}")
        self.input_chw = input_shape
        stem, stages = RESNET_CONFIGS[variant]
        self.stem = ConvBlock(input_shape[0], stem, 3, 1, 1, norm, 0.0)
        blocks, c = [], stem
        for si, (width, n) in enumerate(stages):
            for bi in range(n):
                blocks.append(BasicBlock(c, width, 2 if si > 0 and bi == 0 else 1, norm))
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.input_chw)
        h = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return self.classifier(self.drop(h))


def _first_last(net: nn.Module) -> tuple[str, str]:
    """Names of the first and of the last hidden linear / conv layer (registration order)."""
    names = [n for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return names[0], names[-2]


def _check_groups(cfg: Any, channels: list[int]) -> None:
    bad = sorted({c for c in channels if c % cfg.groups})
    if bad:
        raise ValueError(f"model.groups: {cfg.groups} must divide every ordered width, not {bad}")


def _nest_zoo(
    cfg: Any,
    ordering: dict[str, Any],
    net: nn.Module,
    shape: tuple[int, ...],
    last: str | None = None,
):
    first, last_hidden = _first_last(net)
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    skip = {layers[-1][0]}  # the classifier
    if not cfg.order_first:
        skip.add(first)
    if not cfg.order_classifier_input:
        skip.add(last or last_hidden)
    _check_groups(
        cfg,
        [getattr(m, "out_channels", None) or m.out_features for n, m in layers if n not in skip],
    )
    exclude = list(cfg.exclude)
    if not cfg.order_first:
        exclude.append(first)
    if not cfg.order_classifier_input:
        exclude.append(last or last_hidden)
    cfg = cfg.model_copy(update={"exclude": exclude})
    return nest_plain(cfg, ordering, net, shape)


@register_model("mlp", options=())
def _build_mlp(cfg, ordering, input_shape, num_classes):
    net = MLP(math.prod(input_shape), num_classes, list(cfg.hidden), cfg.norm, cfg.dropout)
    cfg = cfg.model_copy(update={"order_first": True})  # every hidden layer is ordered
    return _nest_zoo(cfg, ordering, net, (math.prod(input_shape),))


@register_model("lenet", options=())
def _build_lenet(cfg, ordering, input_shape, num_classes):
    if len(cfg.hidden) != 3:
        raise ValueError(
            f"model.hidden: lenet takes [conv1, conv2, fc] widths, e.g. {list(LENET_DEFAULT)}; got {list(cfg.hidden)}"
        )
    shape = image_shape(input_shape)
    net = LeNet(shape, num_classes, tuple(int(v) for v in cfg.hidden), cfg.norm, cfg.dropout)  # type: ignore[arg-type]
    return _nest_zoo(cfg, ordering, net, shape)


@register_model("vgg", options=("variant",))
def _build_vgg(cfg, ordering, input_shape, num_classes):
    variant = cfg.variant or "11"
    if variant not in VGG_CONFIGS:
        raise ValueError(f"variant must be one of {tuple(VGG_CONFIGS)}, got {variant!r}")
    shape = image_shape(input_shape)
    return _nest_zoo(
        cfg, ordering, VGG(VGG_CONFIGS[variant], shape, num_classes, cfg.norm, cfg.dropout), shape
    )


@register_model("resnet", options=("variant",))
def _build_resnet(cfg, ordering, input_shape, num_classes):
    shape = image_shape(input_shape)
    net = ResNet(cfg.variant or "20", shape, num_classes, cfg.norm, cfg.dropout)
    return _nest_zoo(cfg, ordering, net, shape)
