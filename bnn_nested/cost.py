"""Cost of a nested model at a width: parameters and FLOPs of the sliced network.

Convention (docs/METHODS.md#cost-flops-parameters-and-latency): **FLOPs = 2 x MACs** (one
multiply-accumulate is two floating-point operations), as counted by
``torch.utils.flop_counter.FlopCounterMode``; elementwise operations (bias add, BN, ReLU) are not
counted by that counter. Parameters count what the sliced network uses for inference.

This module sits below :mod:`bnn_nested.evaluation` and :mod:`bnn_nested.deploy`, which both report
costs.
"""

from __future__ import annotations

from typing import Any

import torch

from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nest.analysis import first_example
from bnn_nested.nest.slicing import network_flops
from bnn_nested.nn.model import Width

__all__ = ["count_flops", "count_params"]


@torch.no_grad()
def count_flops(model: NestifiedModel, example: Any, width: Width = 1.0) -> int:
    """FLOPs (= 2 x MACs) of one forward pass of ``example`` (whole batch; a tensor, a tuple of
    inputs or a dict of keyword inputs) through the sliced network at ``width``.

    Example::

        count_flops(model, torch.zeros(1, 64), width=0.5)
    """
    return network_flops(sliced_network(model, width, example), example)


@torch.no_grad()
def count_params(model: NestifiedModel, example: Any, width: Width = 1.0) -> int:
    """Parameters the sliced network at ``width`` uses for inference (every parameter of the
    physically smaller plain network: sliced weights, biases and norm affine parameters; ordering
    units and ``log_alpha`` are training-only and not counted)."""
    net = sliced_network(model, width, first_example(example))
    return sum(p.numel() for p in net.parameters())
