"""Batch normalisation for nested layers: statistics and affine parameters sliced to the input width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _NestedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Uses ``running_mean[:c]``, ``weight[:c]`` ... for an input with ``c`` active channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        c = x.shape[1]
        if c > self.num_features:
            raise ValueError(f"input has {c} channels, norm expects at most {self.num_features}")
        momentum = 0.0 if self.momentum is None else self.momentum
        use_batch = self.training or self.running_mean is None
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        rm = self.running_mean[:c] if self.running_mean is not None else None
        rv = self.running_var[:c] if self.running_var is not None else None
        w = self.weight[:c] if self.weight is not None else None
        b = self.bias[:c] if self.bias is not None else None
        return F.batch_norm(
            x,
            rm if not self.training or self.track_running_stats else None,
            rv if not self.training or self.track_running_stats else None,
            w,
            b,
            use_batch,
            momentum,
            self.eps,
        )


class NestedBatchNorm1d(_NestedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` sliced to the active width. Example: ``bn = NestedBatchNorm1d(128)``."""


class NestedBatchNorm2d(_NestedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` sliced to the active width. Example: ``bn = NestedBatchNorm2d(64)``."""
