"""Export the sub-network at one width as a plain PyTorch module, saved so that loading needs only torch.

How it works:

1. :func:`~bnn_nested.nest.slicing.sliced_network` makes the physically smaller plain network of
   the width (a copy of the nestified network with plain layers, mean weights and the width's
   calibrated batch-norm statistics, pruned by Torch-Pruning along the width structure).
2. Optionally (default on) every batch norm that directly follows a linear/convolution used only by
   it is folded into that layer: ``W' = W * g / sqrt(v + eps)``, ``b' = (b - mu) * g / sqrt(v + eps)
   + beta`` (per output channel), when ``torch.fx`` can trace the network.
3. The masked model and the exported module are compared on the example (masked == sliced on the
   weights being exported).

Saving and loading the result: :mod:`bnn_nested.deploy.serialize`.

Example::

    plain = export_width(model, 0.5, x[:1])          # nn.Module (a torch.fx.GraphModule)
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import torch
import torch.fx as fx
from torch import nn

from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nest.analysis import call, tensor_leaves
from bnn_nested.nest.convert import CHECK_RTOL, call_nested, find_inexact
from bnn_nested.nn.model import Width

#: How :func:`~bnn_nested.deploy.serialize.save_exported` writes an exported width: ``"export"``
#: (``torch.export``, ``.pt2``), ``"onnx"`` (:mod:`bnn_nested.deploy.onnx`, optional extra) or
#: ``"torchscript"`` (deprecated upstream; a ``DeprecationWarning`` when used).
ExportFormat = Literal["export", "onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("export", "onnx", "torchscript")

_BN = nn.modules.batchnorm._BatchNorm


class TemperatureScaled(nn.Module):
    """``module(x) / temperature``: a fitted temperature baked into an exported network as its
    final division; ``softmax`` of the output is the calibrated probability
    (docs/METHODS.md#temperature-scaling-per-width)."""

    def __init__(self, module: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.module = module
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x) / self.temperature


# --------------------------------------------------------------------------- folding


@torch.no_grad()
def fold_bn(layer: nn.Linear | nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` computing ``bn(layer(x))`` in eval: ``W' = W * s``, ``b' = (b - mu) * s +
    beta`` with ``s = gamma / sqrt(var + eps)`` per output channel."""
    out = copy.deepcopy(layer)
    s = torch.rsqrt(bn.running_var + bn.eps)
    beta = torch.zeros_like(s)
    if bn.weight is not None:
        s = s * bn.weight
        beta = bn.bias
    b = layer.bias if layer.bias is not None else torch.zeros_like(s)
    out.weight.data = layer.weight * s.view((-1,) + (1,) * (layer.weight.dim() - 1))
    out.bias = nn.Parameter((b - bn.running_mean) * s + beta)
    return out


def _fold_all(gm: fx.GraphModule) -> fx.GraphModule:
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), _BN):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module" and len(prev.users) == 1):
            continue
        layer = mods.get(prev.target)
        bn = mods[node.target]
        if (
            not isinstance(layer, (nn.Linear, nn.Conv2d))
            or layer.weight.shape[0] != bn.num_features
        ):
            continue
        if isinstance(layer, nn.Linear) and not isinstance(bn, nn.BatchNorm1d):
            continue
        gm.add_submodule(prev.target, fold_bn(layer, bn))
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        gm.delete_submodule(node.target)
    gm.graph.lint()
    gm.recompile()
    return gm


# --------------------------------------------------------------------------- export


@torch.no_grad()
def export_width(
    model: NestifiedModel,
    width: Width,
    example: Any,
    fold_batchnorm: bool = True,
    channels_last: bool = False,
    temperature: float | None = None,
) -> nn.Module:
    """The sub-network at ``width`` as a plain module with physically sliced weights.

    Args:
        model: a nestified model.
        width: global width ``r in (0, 1]`` or groups per dimension ``{dimension: groups}``.
        example: an input batch ``(B, ...)`` (or a tuple / dict of inputs) for the slicing and
            the check.
        fold_batchnorm: fold each BN into the linear/conv before it (default on).
        channels_last: store 4-D weights channels-last (feed channels-last inputs for speed).
        temperature: a fitted temperature of this width (e.g. ``temperature_for(run.temperatures(),
            width)``): the module returns ``logits / temperature`` (:class:`TemperatureScaled`).

    Returns:
        The plain network in ``eval()`` (a ``torch.fx.GraphModule`` when its batch norms were
        folded; a copy of the network's own modules when FX cannot trace it); ``out(x)`` equals
        ``model(x, width=width)`` in eval (not stochastic).

    Example::

        plain = export_width(model, 0.5, x[:1])
        torch.testing.assert_close(plain(x), model.eval()(x, width=0.5))
    """
    out = sliced_network(model, width, example)
    if fold_batchnorm:
        try:
            out = _fold_all(fx.symbolic_trace(out))
        except Exception:  # noqa: BLE001 - FX cannot trace it: keep the batch norms unfolded
            pass
    _recheck(model, width, example, out)
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    if temperature is not None and temperature != 1.0:
        out = TemperatureScaled(out, temperature).eval()
    return out


def _recheck(model: NestifiedModel, width: Width, example: Any, out: nn.Module) -> None:
    """Masked == sliced on the weights being exported (the conversion check saw other weights:
    a layer that was the identity at initialisation can mix channels after training)."""
    was = model.training
    model.eval()
    try:
        masked = tensor_leaves(call_nested(model, example, width))
        plain = tensor_leaves(call(out, example))
    finally:
        model.train(was)
    worst = 0.0
    for a, b in zip(masked, plain):
        if a.shape != b.shape:
            worst = float("inf")
        elif a.is_floating_point():
            scale = a.abs().max().clamp_min(1e-12)
            worst = max(worst, float((a - b.to(a)).abs().max() / scale))
    if len(masked) != len(plain):
        worst = float("inf")
    if not worst <= CHECK_RTOL:
        with model.width(width):
            groups = {d.name: d.groups for d in model.structure}
            cut = {n: k for n, k in model.active_groups().items() if k < groups[n]}
        bad = find_inexact(model, example, redraw=False, cuts=[cut]) or ["(a combination)"]
        raise ValueError(
            f"export_width: masked and sliced networks differ by {worst:.2g} (relative) at width "
            f"{width} on these weights, on dimension(s) {bad[:5]}; nestify again with exclude=..."
        )


def exported_param_count(module: nn.Module) -> int:
    """Number of parameters of an exported module (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters())
