"""Cost of a nested model at a width: parameters and FLOPs of the sliced network.

Convention (docs/METHODS.md#cost-flops-parameters-and-latency): **FLOPs = 2 x MACs** (one
multiply-accumulate is two floating-point operations), as counted by
``torch.utils.flop_counter.FlopCounterMode``; elementwise operations (bias add, BN, ReLU) are not
counted by that counter. Parameters count what the sliced network uses for inference.

This module sits below :mod:`bnn_nested.evaluation` and :mod:`bnn_nested.deploy`, which both report
costs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nest.analysis import first_example
from bnn_nested.nest.slicing import network_flops
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import NestedMixin, active_param_count
from bnn_nested.nn.ordering_unit import OrderingUnit

__all__ = ["count_flops", "count_params"]


@torch.no_grad()
def count_flops(model: NestedModel, example: torch.Tensor, width: Width = 1.0) -> int:
    """FLOPs (= 2 x MACs) of one forward pass of ``example`` (whole batch) at ``width``
    (a nestified model's ``example`` may be a tuple of inputs or a dict of keyword inputs).

    Example::

        count_flops(model, torch.zeros(1, 64), width=0.5)
    """
    if isinstance(model, NestifiedModel):  # masked at run time: count the sliced network
        return network_flops(sliced_network(model, width, example), example)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, model.width(width):
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def count_params(model: NestedModel, example: torch.Tensor, width: Width = 1.0) -> int:
    """Parameters the sliced network at ``width`` uses for inference.

    Nested layers count their sliced weight and bias; sliced norms count ``2 x active channels``
    affine parameters; ordering-unit parameters (training-only) are not counted; any other
    parameter counts in full.
    """
    if isinstance(model, NestifiedModel):
        net = sliced_network(model, width, first_example(example))
        return sum(p.numel() for p in net.parameters())
    was_training = model.training
    model.eval()
    seen_norm_channels: dict[nn.Module, int] = {}

    def norm_hook(mod, inp, out):
        seen_norm_channels[mod] = inp[0].shape[1]

    hooks = [
        m.register_forward_hook(norm_hook)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        with model.width(width):
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    total = 0
    counted: set[int] = set()
    for m in model.modules():
        if isinstance(m, NestedMixin):
            if m.last_active is not None:
                total += active_param_count(m)
            counted.update(id(p) for p in m.parameters(recurse=False))
        elif isinstance(m, OrderingUnit):
            counted.update(id(p) for p in m.parameters(recurse=False))
        elif m in seen_norm_channels:
            c = seen_norm_channels[m]
            total += sum(c for p in m.parameters(recurse=False))
            counted.update(id(p) for p in m.parameters(recurse=False))
    total += sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return total
