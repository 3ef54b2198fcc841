"""Tiny nestified models for the deploy tests (the zoo's MLP with BN and a two-block CNN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nest import NestifiedModel, nestify
from tests.zoo import mlp as zoo_mlp


class TinyCNN(nn.Module):
    """conv-BN-ReLU -> maxpool -> conv-BN-ReLU -> global mean -> linear (4x4-ish inputs)."""

    def __init__(self, c1: int = 8, c2: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, c1, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(c1)
        self.c2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(torch.relu(self.b1(self.c1(x))), 2)
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def trained_like(model: NestifiedModel, x: torch.Tensor, steps: int = 3) -> NestifiedModel:
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


def mlp() -> tuple[NestifiedModel, torch.Tensor]:
    x = torch.randn(16, 8)
    return trained_like(zoo_mlp(8, 3, [16, 16], groups=4, kept=1, norm="batch"), x), x


def cnn(in_channels: int = 1) -> tuple[NestifiedModel, torch.Tensor]:
    """:class:`TinyCNN` nested by ``nestify`` (groups 4, kept 1): dimensions ``c1`` and ``c2``."""
    x = torch.randn(16, in_channels, 8, 8)
    model = nestify(TinyCNN(in_channels=in_channels), x[:2], groups=4, kept=1)
    return trained_like(model, x), x
