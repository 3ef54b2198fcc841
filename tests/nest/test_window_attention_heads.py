"""Heads of a fused q/k/v attention whose module keeps per-head parameters and no ``head_dim``
(timm's Swin ``WindowAttention``: a relative position bias table of shape ``(positions, heads)``)
are ordered, and slicing cuts the bias table with the heads: masked == sliced at every width.
Before, the layout check wanted a ``head_dim`` attribute and left Swin's heads unordered (FLOPs at
width 0.25: 0.60 of full in the timm table)."""

from __future__ import annotations

import torch
from torch import nn

from bnn_nested.nest import nestify, sliced_network


class WindowAttention(nn.Module):
    def __init__(self, dim: int = 32, num_heads: int = 8, tokens: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn(2 * tokens - 1, num_heads))
        pos = torch.arange(tokens)
        self.register_buffer("index", (pos[:, None] - pos[None, :]) + tokens - 1, persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.relative_position_bias_table[self.index.reshape(-1)].reshape(n, n, -1)
        attn = (q * self.scale) @ k.transpose(-2, -1) + bias.permute(2, 0, 1)
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return self.proj(out)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 32)
        self.attn = WindowAttention()
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


def test_window_attention_heads_ordered_and_bias_table_sliced():
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 5, 6)
    nm = nestify(model, x, groups=4, kept=0).eval()
    heads = nm.structure["attn.qkv.heads"]
    assert heads.kind == "heads" and heads.size == 8 and heads.groups == 4
    for width in (0.25, 0.5, 0.75, 1.0, {"attn.qkv.heads": 1}, {"attn.qkv.heads": 3}):
        small = sliced_network(nm, width, x)
        torch.testing.assert_close(small(x), nm(x, width=width))
    small = sliced_network(nm, {"attn.qkv.heads": 1}, x)
    assert small.attn.num_heads == 2  # one group of two heads
    assert small.attn.relative_position_bias_table.shape == (9, 2)
    assert small.attn.qkv.out_features == 3 * 2 * 4 and small.attn.proj.in_features == 8
