"""A user's module as a config names it under ``imports``: it registers a model and a data set."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from bnn_nested.data import DataSplits, register_dataset
from bnn_nested.models import register_model
from bnn_nested.nest import nestify


@register_model("tiny")
def tiny(cfg, ordering, input_shape, num_classes):
    # a plain network of the user's, nested by nestify (its data set is not one whose shape a new
    # run's validation knows, so it is never built on the meta device, where nestify cannot trace)
    net = nn.Sequential(nn.Linear(input_shape[0], 8), nn.ReLU(), nn.Linear(8, num_classes))
    example = torch.zeros(2, *input_shape)
    return nestify(net, example, groups=cfg.groups, kept=cfg.kept, ordering=ordering)


@register_dataset("blobs")
def blobs(cfg, seed, flatten):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 5, generator=g) * 3

    def part(n):
        y = torch.arange(n) % 3
        return TensorDataset(centres[y] + torch.randn(n, 5, generator=g), y)

    return DataSplits(part(90), part(30), part(30), 3, (5,), "blobs")
