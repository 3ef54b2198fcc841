"""Export the sub-network at one width as a plain PyTorch module, saved so that loading needs only torch.

How it works (generic over models built from nested layers):

1. The model's ``forward_full`` is traced with ``torch.fx`` keeping nested layers, batch norms and
   ordering units as leaves (no per-model code).
2. The model runs once at the width in ``eval()`` (not stochastic: Bayesian layers use their mean
   weights) while a ``TorchFunctionMode`` records the ``linear`` / ``conv2d`` / ``batch_norm`` call
   each leaf makes: its *actual* sliced weight, bias and normalisation statistics (so a per-width
   calibrated BN is picked up however it stores its statistics).
3. Each leaf becomes a plain ``nn.Linear`` / ``nn.Conv2d`` / ``nn.BatchNorm1d/2d`` holding physical
   copies of those tensors; ordering units become ``nn.Identity`` (or a per-channel scale when they
   use ``keep_scaling``); other modules are copied.
4. Optionally (default on) every batch norm that directly follows a linear/convolution used only by
   it is folded into that layer: ``W' = W * g / sqrt(v + eps)``, ``b' = (b - mu) * g / sqrt(v + eps)
   + beta`` (per output channel).

Saving and loading the result: :mod:`bnn_nested.deploy.serialize`.

Example::

    plain = export_width(model, 0.5, x[:1])          # nn.Module (a torch.fx.GraphModule)
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nest.analysis import call, tensor_leaves
from bnn_nested.nest.convert import CHECK_RTOL, call_nested, find_inexact
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit

#: How :func:`~bnn_nested.deploy.serialize.save_exported` writes an exported width: ``"export"``
#: (``torch.export``, ``.pt2``), ``"onnx"`` (:mod:`bnn_nested.deploy.onnx`, optional extra) or
#: ``"torchscript"`` (deprecated upstream; a ``DeprecationWarning`` when used).
ExportFormat = Literal["export", "onnx", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("export", "onnx", "torchscript")

_BN = nn.modules.batchnorm._BatchNorm


def _is_special_leaf(m: nn.Module) -> bool:
    return isinstance(m, (NestedMixin, OrderingUnit, _BN))


class _LeafTracer(fx.Tracer):
    """FX tracer that keeps nested layers, batch norms and ordering units as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_special_leaf(m) or super().is_leaf_module(m, qualname)


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


class ChannelScale(nn.Module):
    """Multiply channel ``c`` (dimension 1) by ``scale[c]``: an ordering unit with keep-scaling."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view((1, -1) + (1,) * (x.dim() - 2))


# --------------------------------------------------------------------------- capture

_SIGNATURES: dict[str, list[tuple[str, Any]]] = {
    "linear": [("input", None), ("weight", None), ("bias", None)],
    "conv2d": [
        ("input", None),
        ("weight", None),
        ("bias", None),
        ("stride", 1),
        ("padding", 0),
        ("dilation", 1),
        ("groups", 1),
    ],
    "batch_norm": [
        (p, v.default if v.default is not inspect.Parameter.empty else None)
        for p, v in inspect.signature(F.batch_norm).parameters.items()
    ],
}
_FUNCS: dict[Callable, str] = {
    F.linear: "linear",
    torch._C._nn.linear: "linear",
    torch.conv2d: "conv2d",
    F.conv2d: "conv2d",
    F.batch_norm: "batch_norm",
}


def _bind(kind: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    names = _SIGNATURES[kind]
    out = {n: d for n, d in names}
    for (n, _), a in zip(names, args):
        out[n] = a
    out.update(kwargs)
    return out


class _Recorder(TorchFunctionMode):
    """Records the linear/conv/batch-norm calls made while a leaf module is running."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.calls: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = _FUNCS.get(func)
        if kind is not None and self.current is not None:
            self.calls.setdefault(self.current, []).append((kind, _bind(kind, args, kwargs)))
        return func(*args, **kwargs)


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().clone()


def _plain_from_call(name: str, kind: str, a: dict[str, Any]) -> nn.Module:
    w, b = a["weight"], a["bias"]
    if kind == "linear":
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    elif kind == "conv2d":
        m = nn.Conv2d(
            w.shape[1] * a["groups"],
            w.shape[0],
            tuple(w.shape[2:]),
            a["stride"],
            a["padding"],
            a["dilation"],
            a["groups"],
            bias=b is not None,
        )
    else:
        x = a["input"]
        if a["training"] or a["running_mean"] is None:
            raise ValueError(f"{name}: batch norm uses batch statistics in eval; cannot export it")
        c = x.shape[1]
        cls = nn.BatchNorm2d if x.dim() == 4 else nn.BatchNorm1d
        m = cls(c, eps=a["eps"], affine=w is not None)
        m.running_mean.copy_(a["running_mean"].detach())
        m.running_var.copy_(a["running_var"].detach())
        if w is not None:
            m.weight.data.copy_(w.detach())
            m.bias.data.copy_(b.detach() if b is not None else torch.zeros(c))
        return m.to(x.device).eval()
    m.weight.data = _clone(w)
    if b is not None:
        m.bias.data = _clone(b)
    return m.eval()


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
    model: NestedModel,
    width: Width,
    example: torch.Tensor,
    fold_batchnorm: bool = True,
    channels_last: bool = False,
    temperature: float | None = None,
) -> nn.Module:
    """The sub-network at ``width`` as a plain module with physically sliced weights.

    Args:
        model: a nested model (any built from nested layers whose ``forward_full`` FX can trace).
        width: global width ``r in (0, 1]`` or per-layer groups ``{layer_name: groups}``.
        example: an input batch ``(B, ...)`` used for one forward pass at ``width``.
        fold_batchnorm: fold each BN into the linear/conv before it (default on).
        channels_last: store 4-D weights channels-last (feed channels-last inputs for speed).
        temperature: a fitted temperature of this width (e.g. ``temperature_for(run.temperatures(),
            width)``): the module returns ``logits / temperature`` (:class:`TemperatureScaled`).

    Returns:
        A ``torch.fx.GraphModule`` of ``nn.Linear``/``nn.Conv2d``/``nn.BatchNorm``/activation modules
        in ``eval()``; ``out(x)`` equals ``model(x, width=width)`` in eval (not stochastic). Models
        whose ``forward_full`` has input-dependent control flow (FX cannot trace it) come back as a
        copy of the model with every nested leaf replaced by its plain module instead.

    Example::

        plain = export_width(model, 0.5, x[:1])
        torch.testing.assert_close(plain(x), model.eval()(x, width=0.5))
    """
    if isinstance(model, NestifiedModel):  # any network: Torch-Pruning slices a plain copy
        out = sliced_network(model, width, example)
        if fold_batchnorm:
            try:
                out = _fold_all(fx.symbolic_trace(out))
            except Exception:  # noqa: BLE001 - FX cannot trace it: keep the batch norms unfolded
                pass
        _recheck(model, width, example, out)
    else:
        out = _export_zoo(model, width, example, fold_batchnorm)
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


def _export_zoo(
    model: NestedModel, width: Width, example: torch.Tensor, fold_batchnorm: bool
) -> nn.Module:
    """Export of a model built from sliced nested layers (the built-in zoo): FX + recorded calls."""
    was_training = model.training
    model.eval()
    try:
        graph: fx.Graph | None = _LeafTracer().trace(model, concrete_args={"width": None})
    except (fx.proxy.TraceError, TypeError):  # input-dependent control flow: swap leaves in place
        graph = None
    if graph is not None:
        # drop the specialised ``width`` argument (the traced forward is ``forward_full``)
        for node in list(graph.nodes):
            if node.op == "call_function" and "assert_is_none" in getattr(
                node.target, "__name__", ""
            ):
                graph.erase_node(node)
        for node in list(graph.nodes):
            if node.op == "placeholder" and node.target.startswith("width") and not node.users:
                graph.erase_node(node)
        targets = [n.target for n in graph.nodes if n.op == "call_module"]
        leaves = {t: model.get_submodule(t) for t in targets}
    else:
        leaves = {n: m for n, m in model.named_modules() if _is_special_leaf(m)}

    rec = _Recorder()
    scales: dict[str, torch.Tensor | None] = {}
    producer: dict[int, str] = {}  # id(output tensor) -> linear/conv leaf that produced it
    follows: dict[str, str] = {}  # batch-norm leaf -> linear/conv leaf whose output it normalises

    def pre(name):
        def hook(mod, inp):
            rec.current = name
            if isinstance(mod, OrderingUnit):
                c = inp[0].shape[1]
                scales[name] = mod.channel_keep_probs()[:c] if mod.keep_scaling else None
            if isinstance(mod, _BN) and id(inp[0]) in producer:
                follows[name] = producer[id(inp[0])]

        return hook

    def post(name):
        def hook(mod, inp, out):
            rec.current = None
            if isinstance(mod, NestedMixin):
                producer[id(out)] = name

        return hook

    handles = []
    for t, m in leaves.items():
        if _is_special_leaf(m):
            handles += [m.register_forward_pre_hook(pre(t)), m.register_forward_hook(post(t))]
    try:
        with model.width(width), rec:
            reference = model(example)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    plain: dict[str, nn.Module] = {}
    for t, m in leaves.items():
        if isinstance(m, OrderingUnit):
            s = scales.get(t)
            plain[t] = nn.Identity() if s is None else ChannelScale(s)
        elif _is_special_leaf(m):
            calls = rec.calls.get(t, [])
            if len(calls) != 1:
                raise ValueError(
                    f"{t}: expected one linear/conv2d/batch_norm call at width {width}, "
                    f"recorded {[k for k, _ in calls]}"
                )
            kind, args = calls[0]
            plain[t] = _plain_from_call(t, kind, args)
        else:
            plain[t] = copy.deepcopy(m).eval()

    if graph is not None:
        root: dict[str, Any] = dict(plain)
        for n in graph.nodes:
            if n.op == "get_attr":
                obj: Any = model
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                root[n.target] = _clone(obj) if isinstance(obj, torch.Tensor) else obj
        out: nn.Module = fx.GraphModule(root, graph, class_name=f"{type(model).__name__}Exported")
        if fold_batchnorm:
            out = _fold_all(out)  # type: ignore[arg-type]
    else:
        out = _swap_leaves(model, plain, follows if fold_batchnorm else {}, example, reference)
    return out


def _swap_leaves(
    model: NestedModel,
    plain: dict[str, nn.Module],
    follows: dict[str, str],
    example: torch.Tensor,
    reference: torch.Tensor,
) -> nn.Module:
    """Fallback for models FX cannot trace: a copy of ``model`` whose nested leaves are replaced by
    plain modules (its own ``forward_full`` still runs; ``torch.export`` flattens it on saving).
    BN folding uses the producer recorded at run time and is checked on ``example``."""
    out = copy.deepcopy(model)
    for name, m in plain.items():
        out.set_submodule(name, m)
    out.eval()
    if follows:
        unfolded = {name: out.get_submodule(name) for pair in follows.items() for name in pair}
        for bn_name, layer_name in follows.items():
            bn, layer = out.get_submodule(bn_name), out.get_submodule(layer_name)
            if isinstance(layer, (nn.Linear, nn.Conv2d)) and isinstance(bn, _BN):
                out.set_submodule(layer_name, fold_bn(layer, bn))
                out.set_submodule(bn_name, nn.Identity())
        with torch.no_grad():
            folded_ok = torch.allclose(out(example), reference, atol=1e-4, rtol=1e-4)
        if not folded_ok:  # a normalised output was also used elsewhere: keep BN unfolded
            for name, m in unfolded.items():
                out.set_submodule(name, m)
    return out


def exported_param_count(module: nn.Module) -> int:
    """Number of parameters of an exported module (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in module.parameters())
