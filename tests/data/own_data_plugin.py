"""A user's data module (tests of "your own data"): loaders registered under several names, with
and without a validation split, and loaders that return something wrong."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bnn_nested.data import DataSplits, register_dataset


def _part(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    centres = torch.tensor([[3.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 3.0, 0]])
    return TensorDataset(centres[y] + torch.randn(n, 4, generator=g), y)


@register_dataset("own_noval")
def own_noval(cfg, seed, flatten):
    return DataSplits(_part(60, seed), None, _part(30, seed + 1), 3, (4,), "own_noval")


@register_dataset("own_emptyval")
def own_emptyval(cfg, seed, flatten):
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    return DataSplits(_part(60, seed), empty, _part(30, seed + 1), 3, (4,), "own_emptyval")


@register_dataset("own_none")
def own_none(cfg, seed, flatten):
    return None


@register_dataset("own_badshape")
def own_badshape(cfg, seed, flatten):
    return DataSplits(_part(60, seed), _part(9, seed), _part(30, seed + 1), 3, (5,), "bad")


@register_dataset("own_badlabel")
def own_badlabel(cfg, seed, flatten):
    return DataSplits(_part(60, seed), _part(9, seed), _part(30, seed + 1), 2, (4,), "bad")


@register_dataset("own_notrain")
def own_notrain(cfg, seed, flatten):
    empty = TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    return DataSplits(empty, _part(9, seed), _part(30, seed + 1), 3, (4,), "bad")
