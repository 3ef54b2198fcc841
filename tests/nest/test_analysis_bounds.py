"""The graph analysis stays bounded where Torch-Pruning's group search multiplies its work, and the
faster membership test answers as the scan it replaces.

ReXNet adds its shortcut to the first channels only (``cat([x[:, :C] + shortcut, x[:, C:]])``):
the index sets reaching a layer multiply block after block, and the analysis of timm's rexnet_100
ran over 300 s (98 % of it in the group's linear membership scan, profiled). Visformer's
attention reaches one reshape through thousands of paths (29 million mapped indices in 60 s)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from bnn_nested.nest import analysis, nestify, sliced_network


class PartialResidual(nn.Module):
    """ReXNet's block: an expansion (its inner width can be ordered), a projection to ``c_out``
    channels, then ``out[:, :c_in] += x``; the channels beyond ``c_in`` pass unchanged."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in = c_in
        self.expand = nn.Sequential(nn.Conv2d(c_in, 2 * c_in, 1), nn.ReLU())
        self.project = nn.Sequential(
            nn.Conv2d(2 * c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)
        )

    def forward(self, x):
        out = self.project(self.expand(x))
        return torch.cat([out[:, : self.c_in] + x, out[:, self.c_in :]], 1)


def rexnet_like(depth: int) -> nn.Module:
    widths = [8 + 4 * i for i in range(depth + 1)]
    blocks = [PartialResidual(a, b) for a, b in zip(widths, widths[1:])]
    return nn.Sequential(
        nn.Conv2d(3, widths[0], 3, padding=1),
        *blocks,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(widths[-1], 5),
    ).eval()


def _summary(structure):
    return (
        sorted((d.name, d.size, d.groups, repr(d.members), d.root) for d in structure),
        dict(sorted(structure.unordered.items())),
    )


def test_indexed_membership_gives_the_scans_structure(monkeypatch):
    torch.manual_seed(0)
    model, x = rexnet_like(3), torch.randn(2, 3, 8, 8)
    fast = analysis.find_channel_dims(model, x, groups=4, kept=0)
    monkeypatch.setattr(analysis, "_indexed_groups", contextlib.nullcontext)  # Torch-Pruning's scan
    slow = analysis.find_channel_dims(model, x, groups=4, kept=0)
    assert _summary(fast) == _summary(slow)
    assert len(fast.dims) == 3 and len(fast.unordered) == 2  # something to compare


def test_multiplying_index_sets_are_bounded_and_the_rest_nests_exactly():
    """Four partial residuals: without the bound the search of the residual stream did not end
    within the 300 s limit; with it, each stream group stops at MAX_GROUP_ITEMS and is unordered
    with its reason, and the blocks' expansions are ordered and exact."""
    torch.manual_seed(0)
    model, x = rexnet_like(4), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    nm = nestify(model, x, groups=4, kept=0).eval()
    assert sorted(d.name for d in nm.structure) == [f"{i}.expand.0" for i in range(1, 5)]
    for name in ("2.project.0", "3.project.0", "4.project.0"):
        assert "(layer, index set) pairs" in nm.structure.unordered[name]
    for width in (0.25, 0.5, 1.0):
        torch.testing.assert_close(sliced_network(nm, width, x)(x), nm(x, width=width))


def test_the_reshape_budget_leaves_the_dimension_unordered(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 8 * 8, 4)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    assert "0" in {d.name for d in analysis.find_channel_dims(model, x, groups=4, kept=0)}
    monkeypatch.setattr(analysis, "MAX_GROUP_INDICES", 100)  # the flatten maps 8 x 64 indices
    structure = analysis.find_channel_dims(model, x, groups=4, kept=0)
    assert "indices through reshapes" in structure.unordered["0"]
