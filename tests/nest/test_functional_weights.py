"""A layer whose parameters are used without calling it (timm's EVA attention: ``F.linear(x,
weight=self.qkv.weight, bias=cat(q_bias, k_bias, v_bias))``) is never seen by the graph analysis;
it must be listed in ``structure.unordered`` with its reason, not skipped silently."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nest import UnorderedDimensionWarning, nestify


class FunctionalProjection(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.proj = nn.Linear(16, 16)  # never called: its weight is used below
        self.bias = nn.Parameter(torch.zeros(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = F.linear(h, self.proj.weight, self.bias)
        return self.head(torch.relu(h))


def test_a_layer_used_through_its_weight_is_listed_with_its_reason():
    torch.manual_seed(0)
    model, x = FunctionalProjection().eval(), torch.randn(4, 6)
    # fc1's outputs reach proj's weight outside the graph: the conversion check catches it
    with pytest.warns(UnorderedDimensionWarning, match=r"\['fc1'\]"):
        nm = nestify(model, x, groups=4, kept=0)
    reason = nm.structure.unordered["proj"]
    assert "not called in the example forward pass" in reason and "F.linear" in reason
    assert "fc1" in nm.structure.unordered and len(nm.structure) == 0
