"""Small helpers shared by the nn layers and the code that runs models."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

#: a model's inputs as users have them: a tensor, a tuple of positional inputs, or a dict of
#: keyword inputs (a tokenizer's batch)
Inputs = Any


def move_inputs(x: Inputs, device: torch.device | str) -> Inputs:
    """``x`` with every tensor in it (a tensor, a tuple / list, a dict) moved to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: move_inputs(v, device) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(move_inputs(v, device) for v in x)
    return x


def call_model(model: nn.Module, x: Inputs, **kwargs: Any) -> Any:
    """``model(**x)`` for a dict, ``model(*x)`` for a tuple / list, ``model(x)`` for a tensor
    (``kwargs``, e.g. ``width=``, passed too)."""
    if isinstance(x, Mapping):
        return model(**x, **kwargs)
    if isinstance(x, tuple | list):
        return model(*x, **kwargs)
    return model(x, **kwargs)


def map_inputs(x: Inputs, fn) -> Inputs:
    """``fn`` applied to every tensor of ``x`` that has a batch dimension (other values kept)."""
    if isinstance(x, torch.Tensor):
        return fn(x) if x.dim() > 0 else x
    if isinstance(x, Mapping):
        return {k: map_inputs(v, fn) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return type(x)(map_inputs(v, fn) for v in x)
    return x


@contextmanager
def traceless(module: nn.Module, devices: Sequence[int | torch.device] = ()) -> Iterator[None]:
    """Run a block whose forward passes leave no trace: ``module``'s buffers (batch-norm
    statistics) are put back afterwards and the global RNGs (CPU and ``devices``) are unchanged.

    Example::

        with traceless(model):
            model.train()(x)   # running statistics and random state as they were
    """
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        with torch.random.fork_rng(devices=list(devices)):
            yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def module_device(module: nn.Module) -> torch.device:
    """Device of ``module``'s first parameter (CPU for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def conv_args(m: nn.Conv2d) -> dict:
    """Constructor arguments of ``nn.Conv2d`` that rebuild ``m``'s shape (weights not included)."""
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": m.kernel_size,
        "stride": m.stride,
        "padding": m.padding,
        "dilation": m.dilation,
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }
