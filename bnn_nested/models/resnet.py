"""Nested CIFAR-style residual networks (He et al., *Deep Residual Learning*, CVPR 2016).

``resnet20``: 3x3 stem with 16 channels, three stages of 3 basic blocks (16, 32, 64 channels).
``resnet18``: 3x3 stem with 64 channels, four stages of 2 basic blocks (64, 128, 256, 512), no
initial max pool (the usual CIFAR adaptation). Shortcuts are the identity, or a 1x1 convolution + BN
when the shape changes. Residual additions happen at matching active width: the shortcut is sliced
to the main branch's active channels (zero-padded in the rare case it is narrower).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.models.options import NestOptions
from bnn_nested.models.vgg import NestedConvBlock, check_norm, image_shape
from bnn_nested.nn import NestedBatchNorm2d, NestedConv2d, NestedLinear, NestedModel, OrderingUnit

#: variant -> (stem channels, [(channels, blocks), ...]).
RESNET_CONFIGS: dict[str, tuple[int, list[tuple[int, int]]]] = {
    "20": (16, [(16, 3), (32, 3), (64, 3)]),
    "18": (64, [(64, 2), (128, 2), (256, 2), (512, 2)]),
}


def add_at_width(main: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``main + shortcut`` where the shortcut is sliced (or zero-padded) to ``main``'s channels."""
    c, s = main.shape[1], shortcut.shape[1]
    if s > c:
        shortcut = shortcut[:, :c]
    elif s < c:
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, c - s))
    return main + shortcut


class NestedBasicBlock(nn.Module):
    """``relu(bn2(conv2(block1(x))) + shortcut(x))`` then an ordering unit on the block output.

    ``block1`` is a :class:`NestedConvBlock` (conv -> BN -> ReLU -> ordering unit).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        groups: int,
        kept: int,
        ordered_out: bool,
        norm: str,
        weight_posterior: str,
        init_log_alpha: float,
        ordering: dict[str, Any] | None,
    ) -> None:
        super().__init__()
        kw: dict[str, Any] = dict(weight_posterior=weight_posterior, init_log_alpha=init_log_alpha)
        self.block1 = NestedConvBlock(
            in_channels,
            out_channels,
            3,
            stride,
            1,
            groups,
            kept,
            True,
            norm,
            0.0,
            ordering=ordering,
            **kw,
        )
        og, of = (groups, kept) if ordered_out else (1, 0)
        self.conv2 = NestedConv2d(
            out_channels,
            out_channels,
            3,
            1,
            1,
            bias=norm == "none",
            order_groups=og,
            kept=of,
            ordered=ordered_out,
            **kw,
        )
        self.bn2 = NestedBatchNorm2d(out_channels) if norm == "batch" else None
        self.shortcut_conv: NestedConv2d | None = None
        self.shortcut_bn: NestedBatchNorm2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut_conv = NestedConv2d(
                in_channels,
                out_channels,
                1,
                stride,
                0,
                bias=norm == "none",
                order_groups=og,
                kept=of,
                ordered=ordered_out,
                **kw,
            )
            self.shortcut_bn = NestedBatchNorm2d(out_channels) if norm == "batch" else None
        self.ou = (
            OrderingUnit(out_channels, groups, kept, **(ordering or {})) if ordered_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(self.block1(x))
        if self.bn2 is not None:
            h = self.bn2(h)
        sc = x
        if self.shortcut_conv is not None:
            sc = self.shortcut_conv(x)
            if self.shortcut_bn is not None:
                sc = self.shortcut_bn(sc)
        h = torch.relu(add_at_width(h, sc))
        return self.ou(h) if self.ou is not None else h


class NestedResNet(NestedModel):
    """CIFAR-style nested ResNet (``variant`` ``"20"`` or ``"18"``).

    The stem is ordered iff ``order_first``; the last block's output (the classifier's input) iff
    ``order_classifier_input``. The classifier is never truncated.

    Args:
        variant: ``"20"`` or ``"18"``.
        input_shape: ``(C, H, W)``.
        **options: :class:`~bnn_nested.models.options.NestOptions` (groups, kept, norm, dropout,
            weight_posterior, init_log_alpha, ordering, order_first, order_classifier_input).

    Example::

        model = NestedResNet("20", (3, 32, 32), 10, groups=16, kept=2)
        logits = model(x, width=0.5)
    """

    #: Defaults of this model's :class:`~bnn_nested.models.options.NestOptions`.
    DEFAULTS: dict[str, Any] = {"groups": 16, "norm": "batch"}

    def __init__(
        self,
        variant: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        **options: Any,
    ) -> None:
        super().__init__()
        o = NestOptions.resolve(self.DEFAULTS, options)
        check_norm(o.norm)
        if variant not in RESNET_CONFIGS:
            raise ValueError(f"variant must be one of {tuple(RESNET_CONFIGS)}, got {variant!r}")
        c_in, _, _ = self.input_chw = image_shape(input_shape)
        stem, stages = RESNET_CONFIGS[variant]
        self.stem = NestedConvBlock(
            c_in,
            stem,
            3,
            1,
            1,
            o.groups,
            o.kept,
            o.order_first,
            o.norm,
            0.0,
            o.weight_posterior,
            o.init_log_alpha,
            o.ordering,
        )
        blocks: list[nn.Module] = []
        c = stem
        n_total = sum(n for _, n in stages)
        for si, (width, n) in enumerate(stages):
            for bi in range(n):
                stride = 2 if si > 0 and bi == 0 else 1
                last = len(blocks) == n_total - 1
                blocks.append(
                    NestedBasicBlock(
                        c,
                        width,
                        stride,
                        o.groups,
                        o.kept,
                        o.order_classifier_input or not last,
                        o.norm,
                        o.weight_posterior,
                        o.init_log_alpha,
                        o.ordering,
                    )
                )
                c = width
        self.blocks = nn.Sequential(*blocks)
        self.drop = nn.Dropout(o.dropout) if o.dropout > 0 else None
        self.classifier = NestedLinear(
            c,
            num_classes,
            ordered=False,
            weight_posterior=o.weight_posterior,  # type: ignore[arg-type]
            init_log_alpha=o.init_log_alpha,
        )

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], *self.input_chw)
        h = self.blocks(self.stem(x))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        if self.drop is not None:
            h = self.drop(h)
        return self.classifier(h)

    def _named_blocks(self) -> list[tuple[str, NestedBasicBlock]]:
        return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]  # type: ignore[misc]

    def weight_kl_pairs(self):
        pairs: list[tuple[nn.Module, OrderingUnit | None]] = [(self.stem.conv, self.stem.ou)]
        for _, b in self._named_blocks():
            pairs.append((b.block1.conv, b.block1.ou))
            pairs.append((b.conv2, b.ou))
            if b.shortcut_conv is not None:
                pairs.append((b.shortcut_conv, b.ou))
        return pairs + [(self.classifier, None)]

    def residual_blocks(self) -> list[list[str]]:
        """Module names on each block's residual branch (for the invariant regularizer)."""
        return [[f"{n}.block1.conv", f"{n}.conv2"] for n, _ in self._named_blocks()]

    def norm_followed_weights(self) -> list[str]:
        if self.stem.bn is None:
            return []
        names = ["stem.conv"]
        for n, b in self._named_blocks():
            names += [f"{n}.block1.conv", f"{n}.conv2"]
            if b.shortcut_conv is not None:
                names.append(f"{n}.shortcut_conv")
        return names
