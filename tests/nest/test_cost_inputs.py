"""Costs of nestified models with several inputs and recurrent layers, against hand counts."""

from __future__ import annotations

import torch
from torch import nn

from bnn_nested.cost import count_flops, count_params
from bnn_nested.nest import nestify


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x, y):
        return self.head(torch.relu(self.a(x) + self.b(y)))


@torch.no_grad()
def test_count_params_and_flops_of_a_two_input_model():
    torch.manual_seed(0)
    inputs = (torch.randn(2, 4), torch.randn(2, 6))
    nm = nestify(TwoInputs().eval(), inputs, groups=4, kept=0)
    assert nm.dims() == ["a"]
    for width, h in [(0.25, 2), (1.0, 8)]:
        assert count_params(nm, inputs, width) == (4 + 6 + 2) * h + 2 * h + 2
        assert count_flops(nm, inputs, width) == 2 * 2 * (4 * h + 6 * h + 2 * h)


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


@torch.no_grad()
def test_lstm_flops_counted():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    nm = nestify(Recurrent().eval(), x, groups=4)
    assert "LSTM" in nm.structure.unordered["lstm"]
    lstm = 2 * 5 * 4 * 16 * (8 + 16)  # 4 gates, input and hidden matmuls, 5 steps
    assert count_flops(nm, x) == lstm + 2 * 16 * 3
