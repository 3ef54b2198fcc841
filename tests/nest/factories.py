"""Networks named by ``model: {name: import, target: "tests.nest.factories:..."}`` in the tests."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class TinyResidual(nn.Module):
    """conv -> BN -> residual block -> 2x2 max pool -> flatten -> linear head, on (1, 8, 8) digits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.c1 = nn.Conv2d(width, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width * 16, num_classes)

    def forward(self, x):
        h = F.relu(self.bn(self.stem(x.reshape(-1, 1, 8, 8))))
        h = F.relu(h + self.c2(F.relu(self.c1(h))))
        return self.head(F.max_pool2d(h, 2).flatten(1))


def tiny_residual(num_classes: int = 10, width: int = 16) -> nn.Module:
    return TinyResidual(num_classes, width)


NOT_CALLABLE = 3
