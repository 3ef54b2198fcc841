"""Nested VGG (Simonyan & Zisserman 2015; CIFAR-style, batch norm) and the shared conv block.

The reference BNNN recipe (docs/METHODS.md#differences-from-the-reference-code) is VGG-11-wide:
96-192-384-384-768-768-768-768 channels with batch norm, groups ``G = 32``, ``F = 2``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnn_nested.config import DEFAULT_INIT_LOG_ALPHA
from bnn_nested.models.options import NestOptions
from bnn_nested.nn import NestedBatchNorm2d, NestedConv2d, NestedLinear, NestedModel, OrderingUnit

#: Layer plans: channel counts, ``"M"`` = 2x2 max pool.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "11-wide": [96, "M", 192, "M", 384, 384, "M", 768, 768, "M", 768, 768, "M"],
}
NORMS = ("none", "batch")


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class NestedConvBlock(nn.Module):
    """``NestedConv2d -> [NestedBatchNorm2d] -> ReLU -> [Dropout] -> [OrderingUnit]``.

    The ordering unit (present iff ``ordered``) masks *after* normalisation and activation, so a hard
    mask computes the sliced network (docs/METHODS.md#variational-ordering-units).
    Shapes: ``(B, C_in', H, W) -> (B, C_out', H', W')``.

    Example::

        block = NestedConvBlock(3, 64, groups=16, kept=2, norm="batch")
        h = block(x)
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        groups: int = 16,
        kept: int = 2,
        ordered: bool = True,
        norm: str = "batch",
        dropout: float = 0.0,
        weight_posterior: str = "point",
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        ordering: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_norm(norm)
        self.conv = NestedConv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            bias=norm == "none",
            order_groups=groups if ordered else 1,
            kept=kept if ordered else 0,
            ordered=ordered,
            weight_posterior=weight_posterior,
            init_log_alpha=init_log_alpha,  # type: ignore[arg-type]
        )
        self.bn = NestedBatchNorm2d(out_channels) if norm == "batch" else None
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.ou = OrderingUnit(out_channels, groups, kept, **(ordering or {})) if ordered else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        if self.bn is not None:
            h = self.bn(h)
        h = torch.relu(h)
        if self.drop is not None:
            h = self.drop(h)
        return self.ou(h) if self.ou is not None else h


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)``, or ``(1, s, s)`` for a flat square input of ``s * s`` features."""
    if len(input_shape) == 3:
        return tuple(input_shape)  # type: ignore[return-value]
    if len(input_shape) == 1:
        s = round(input_shape[0] ** 0.5)
        if s * s == input_shape[0]:
            return (1, s, s)
    raise ValueError(f"input_shape must be (C, H, W) or a flat square image, got {input_shape}")


class NestedVGG(NestedModel):
    """VGG with nested convolutions: every conv is a :class:`NestedConvBlock`, then one linear
    classifier (never truncated) on the flattened features.

    Pools are skipped once the feature map is 1x1, so small inputs (28x28, 8x8) work too. The first
    conv is ordered iff ``order_first``; the last conv (the classifier's input) iff
    ``order_classifier_input``.

    Args:
        layers: a plan like ``VGG_CONFIGS["11"]`` or a key of :data:`VGG_CONFIGS`.
        input_shape: ``(C, H, W)``.
        **options: :class:`~bnn_nested.models.options.NestOptions` (groups, kept, norm, dropout,
            weight_posterior, init_log_alpha, ordering, order_first, order_classifier_input).

    Example::

        model = NestedVGG("11-wide", (3, 32, 32), 10, groups=32, kept=2, norm="batch")
        logits = model(x, width=0.25)
    """

    #: Defaults of this model's :class:`~bnn_nested.models.options.NestOptions`.
    DEFAULTS: dict[str, Any] = {"groups": 32, "norm": "batch"}

    def __init__(
        self,
        layers: str | list[int | str],
        input_shape: tuple[int, ...],
        num_classes: int,
        **options: Any,
    ) -> None:
        super().__init__()
        o = NestOptions.resolve(self.DEFAULTS, options)
        if isinstance(layers, str):
            if layers not in VGG_CONFIGS:
                raise ValueError(f"variant must be one of {tuple(VGG_CONFIGS)}, got {layers!r}")
            layers = VGG_CONFIGS[layers]
        c, h, w = self.input_chw = image_shape(input_shape)
        convs = [i for i, v in enumerate(layers) if v != "M"]
        if not convs:
            raise ValueError("layers must contain at least one convolution")
        mods: list[nn.Module] = []
        self.block_names: list[str] = []
        for i, v in enumerate(layers):
            if v == "M":
                if min(h, w) >= 2:
                    mods.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            ordered = (o.order_first or i != convs[0]) and (
                o.order_classifier_input or i != convs[-1]
            )
            mods.append(
                NestedConvBlock(
                    c,
                    int(v),
                    3,
                    1,
                    1,
                    o.groups,
                    o.kept,
                    ordered,
                    o.norm,
                    o.dropout,
                    o.weight_posterior,
                    o.init_log_alpha,
                    o.ordering,
                )
            )
            self.block_names.append(f"features.{len(mods) - 1}")
            c = int(v)
        self.features = nn.Sequential(*mods)
        self.classifier = NestedLinear(
            c * h * w,
            num_classes,
            ordered=False,
            weight_posterior=o.weight_posterior,  # type: ignore[arg-type]
            init_log_alpha=o.init_log_alpha,
        )

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat images
            x = x.view(x.shape[0], *self.input_chw)
        return self.classifier(self.features(x).flatten(1))

    def blocks(self) -> list[NestedConvBlock]:
        return [self.get_submodule(n) for n in self.block_names]  # type: ignore[misc]

    def weight_kl_pairs(self):
        return [(b.conv, b.ou) for b in self.blocks()] + [(self.classifier, None)]

    def norm_followed_weights(self) -> list[str]:
        return [f"{n}.conv" for n, b in zip(self.block_names, self.blocks()) if b.bn is not None]
