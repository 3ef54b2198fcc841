"""Tiny nested models for the deploy tests (an MLP with BN and a two-block CNN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bnn_nested.models import NestedMLP
from bnn_nested.nn import NestedBatchNorm2d, NestedConv2d, NestedLinear, NestedModel, OrderingUnit


class TinyCNN(NestedModel):
    """conv-BN-ReLU-OU -> maxpool -> conv-BN-ReLU-OU -> global mean -> linear (4x4-ish inputs)."""

    def __init__(
        self, c1: int = 8, c2: int = 16, groups: int = 4, kept: int = 1, in_channels: int = 1
    ) -> None:
        super().__init__()
        self.c1 = NestedConv2d(
            in_channels, c1, 3, padding=1, bias=False, order_groups=groups, kept=kept
        )
        self.b1 = NestedBatchNorm2d(c1)
        self.o1 = OrderingUnit(c1, groups, kept)
        self.c2 = NestedConv2d(c1, c2, 3, padding=1, bias=False, order_groups=groups, kept=kept)
        self.b2 = NestedBatchNorm2d(c2)
        self.o2 = OrderingUnit(c2, groups, kept)
        self.fc = NestedLinear(c2, 3, ordered=False)

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        x = self.o1(torch.relu(self.b1(self.c1(x))))
        x = F.max_pool2d(x, 2)
        x = self.o2(torch.relu(self.b2(self.c2(x))))
        return self.fc(x.mean((2, 3)))

    def weight_kl_pairs(self):
        return [(self.c1, self.o1), (self.c2, self.o2), (self.fc, None)]


def trained_like(model: NestedModel, x: torch.Tensor, steps: int = 3) -> NestedModel:
    """Give BN non-trivial running statistics and random affine parameters; return it in eval."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        with model.masking(False):
            for _ in range(steps):
                model(x)
    return model.eval()


def mlp() -> tuple[NestedMLP, torch.Tensor]:
    x = torch.randn(16, 8)
    return trained_like(NestedMLP(8, 3, [16, 16], groups=4, kept=1, norm="batch"), x), x


def cnn(in_channels: int = 1) -> tuple[TinyCNN, torch.Tensor]:
    x = torch.randn(16, in_channels, 8, 8)
    return trained_like(TinyCNN(in_channels=in_channels), x), x
