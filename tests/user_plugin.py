"""A user's module as a config names it under ``imports``: it registers a model and a data set."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bnn_nested.data import DataSplits, register_dataset
from bnn_nested.models import NestedMLP, register_model


@register_model("tiny")
def tiny(cfg, ordering, input_shape, num_classes):
    # runs on the meta device too when a config is validated: factory functions only
    return NestedMLP(input_shape[0], num_classes, [8], cfg.groups, cfg.kept, ordering)


@register_dataset("blobs")
def blobs(cfg, seed, flatten):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 5, generator=g) * 3

    def part(n):
        y = torch.arange(n) % 3
        return TensorDataset(centres[y] + torch.randn(n, 5, generator=g), y)

    return DataSplits(part(90), part(30), part(30), 3, (5,), "blobs")
