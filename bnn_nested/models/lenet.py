"""Nested LeNet (LeCun et al. 1998, modernised: 'same' 5x5 convolutions, max pooling, ReLU)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bnn_nested.models.options import NestOptions
from bnn_nested.models.vgg import NestedConvBlock, check_norm, image_shape
from bnn_nested.nn import NestedBatchNorm1d, NestedLinear, NestedModel, OrderingUnit

#: Default ``(conv1, conv2, fc)`` widths.
LENET_DEFAULT = (16, 32, 256)


class NestedLeNet(NestedModel):
    """``conv5x5 -> pool -> conv5x5 -> pool -> fc -> classifier``, each hidden layer a nested block.

    Works for 28x28 grayscale images (MNIST) and, being 'same'-padded, for 8x8 digits. ``conv1`` is
    ordered iff ``order_first``; ``fc`` (the classifier's input) iff ``order_classifier_input``;
    ``conv2`` always. Flattening is channel-major, so the leading ``c`` channels of ``conv2`` are the
    leading ``c * H * W`` inputs of ``fc`` and slicing stays exact.

    Args:
        input_shape: ``(C, H, W)`` or a flat square image.
        channels: ``(conv1, conv2, fc)`` widths; ``groups`` must divide each ordered one.
        **options: :class:`~bnn_nested.models.options.NestOptions` (groups, kept, norm, dropout,
            weight_posterior, init_log_alpha, ordering, order_first, order_classifier_input).

    Example::

        model = NestedLeNet((1, 28, 28), 10, groups=16, kept=2, weight_posterior="gaussian")
        logits = model(x, width=0.5)
    """

    #: Defaults of this model's :class:`~bnn_nested.models.options.NestOptions`.
    DEFAULTS: dict[str, Any] = {"groups": 16, "norm": "none"}

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        channels: tuple[int, int, int] = LENET_DEFAULT,
        **options: Any,
    ) -> None:
        super().__init__()
        o = NestOptions.resolve(self.DEFAULTS, options)
        check_norm(o.norm)
        if len(channels) != 3:
            raise ValueError(f"hidden: lenet takes [conv1, conv2, fc] widths, got {list(channels)}")
        c, h, w = self.input_chw = image_shape(input_shape)
        c1, c2, fc = (int(v) for v in channels)
        kw = dict(
            norm=o.norm,
            dropout=o.dropout,
            weight_posterior=o.weight_posterior,
            init_log_alpha=o.init_log_alpha,
            ordering=o.ordering,
        )
        self.conv1 = NestedConvBlock(c, c1, 5, 1, 2, o.groups, o.kept, o.order_first, **kw)
        self.conv2 = NestedConvBlock(c1, c2, 5, 1, 2, o.groups, o.kept, True, **kw)
        self.pool = nn.MaxPool2d(2)
        h, w = h // 4, w // 4
        if h < 1 or w < 1:
            raise ValueError(f"input_shape: lenet needs images of at least 4x4, got {input_shape}")
        ordered_fc = o.order_classifier_input
        self.fc = NestedLinear(
            c2 * h * w,
            fc,
            bias=o.norm == "none",
            order_groups=o.groups if ordered_fc else 1,
            kept=o.kept if ordered_fc else 0,
            ordered=ordered_fc,
            weight_posterior=o.weight_posterior,  # type: ignore[arg-type]
            init_log_alpha=o.init_log_alpha,
        )
        self.fc_bn = NestedBatchNorm1d(fc) if o.norm == "batch" else None
        self.fc_drop = nn.Dropout(o.dropout) if o.dropout > 0 else None
        self.fc_ou = (
            OrderingUnit(fc, o.groups, o.kept, **(o.ordering or {})) if ordered_fc else None
        )
        self.classifier = NestedLinear(
            fc,
            num_classes,
            ordered=False,
            weight_posterior=o.weight_posterior,  # type: ignore[arg-type]
            init_log_alpha=o.init_log_alpha,
        )

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.view(x.shape[0], *self.input_chw)
        h = self.pool(self.conv1(x))
        h = self.pool(self.conv2(h)).flatten(1)
        h = self.fc(h)
        if self.fc_bn is not None:
            h = self.fc_bn(h)
        h = torch.relu(h)
        if self.fc_drop is not None:
            h = self.fc_drop(h)
        if self.fc_ou is not None:
            h = self.fc_ou(h)
        return self.classifier(h)

    def weight_kl_pairs(self):
        return [
            (self.conv1.conv, self.conv1.ou),
            (self.conv2.conv, self.conv2.ou),
            (self.fc, self.fc_ou),
            (self.classifier, None),
        ]

    def norm_followed_weights(self) -> list[str]:
        if self.fc_bn is None:
            return []
        return ["conv1.conv", "conv2.conv", "fc"]
