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

Saving uses **``torch.export``** (``.pt2``, batch dimension dynamic); ``torch.export.load(path)
.module()`` runs it with nothing but torch installed. ``format="torchscript"`` (``torch.jit.trace``,
deprecated upstream) is offered as an alternative.

**Loading a ``.pt2`` (or TorchScript) file runs code from it**: ``torch.export.load`` unpickles
with ``weights_only=False`` inside, so a crafted file executes whatever it likes. Load those only
from yourself or people you trust. For files from anyone else use the safe pair
:func:`save_width_weights` / :func:`load_width_weights`: the file holds tensors and a plain-data
spec (the run's config and the width), is read with ``torch.load(weights_only=True)`` (no code),
and the architecture is rebuilt by bnn-nested from the spec (configs naming ``model.name:
import``, which would import a module, are refused unless ``allow_import=True``).

Example::

    plain = export_width(model, 0.5, x[:1])          # nn.Module (a torch.fx.GraphModule)
    save_exported(plain, x[:1], "w050.pt2"); m = load_exported("w050.pt2")   # trusted files
    save_width_weights(model, cfg, 0.5, x[:2], "w050.pt")                   # to share
    m = load_width_weights("w050.pt")                                        # from anyone
"""

from __future__ import annotations

import copy
import inspect
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from bnn_nested.io import atomic_write, refused_code
from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit

ExportFormat = Literal["export", "torchscript"]
EXPORT_FORMATS: tuple[str, ...] = ("export", "torchscript")

_BN = nn.modules.batchnorm._BatchNorm


def _is_special_leaf(m: nn.Module) -> bool:
    return isinstance(m, (NestedMixin, OrderingUnit, _BN))


class _LeafTracer(fx.Tracer):
    """FX tracer that keeps nested layers, batch norms and ordering units as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return _is_special_leaf(m) or super().is_leaf_module(m, qualname)


class TemperatureScaled(nn.Module):
    """``module(x) / temperature``: a fitted temperature (docs/METHODS.md, "Temperature scaling per
    width") baked into an exported network as its final division; ``softmax`` of the output is the
    calibrated probability."""

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
            except (fx.proxy.TraceError, TypeError, NotImplementedError):
                pass  # control flow FX cannot trace: keep the batch norms unfolded
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


def save_exported(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    format: ExportFormat = "export",
    dynamic_batch: bool = True,
) -> Path:
    """Save ``module`` so that :func:`load_exported` (torch only) can run it; written atomically.

    ``format="export"``: ``torch.export.export`` + ``torch.export.save`` (``.pt2``), batch dimension
    dynamic when ``dynamic_batch`` (``example`` needs batch >= 2 then). ``"torchscript"``:
    ``torch.jit.trace`` + ``torch.jit.save``. A :class:`~bnn_nested.deploy.runtime.MicroBatched`
    wrapper is not saved, only the module inside it (wrap the loaded module again).
    """
    from bnn_nested.deploy.runtime import MicroBatched

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    while isinstance(module, MicroBatched):
        module = module.module
    module = module.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        if format == "export":
            if dynamic_batch and example.shape[0] < 2:
                example = example.expand((2,) + tuple(example.shape[1:])).contiguous()
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            torch.export.save(program, buf)
        else:
            torch.jit.save(torch.jit.trace(module, example), buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_exported(path: str | Path, format: ExportFormat = "export") -> nn.Module:
    """Load a module written by :func:`save_exported` (needs only torch).

    Equivalent torch-only code: ``torch.export.load(path).module()`` or ``torch.jit.load(path)``.

    Warning:
        This **runs code stored in the file**: ``torch.export.load`` unpickles with
        ``weights_only=False`` (and TorchScript files hold code by design). Load only files you
        made or trust; for files from others use :func:`load_width_weights` (tensors only).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if format == "export":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path))


# --------------------------------------------------------------------------- safe weights

#: ``format`` field of a file written by :func:`save_width_weights`.
WIDTH_WEIGHTS_FORMAT = "bnn-nested-width-weights/1"


class UnsafeOrInvalidWeights(ValueError):
    """A width-weights file that is refused: holds code, is malformed or does not match its spec."""


def save_width_weights(
    model: NestedModel,
    config: Any,
    width: float,
    example: torch.Tensor,
    path: str | Path,
    fold_batchnorm: bool = True,
) -> Path:
    """Save the sub-network at ``width`` as tensors plus a plain-data spec (safe to share).

    Args:
        model: the trained model of a run (``load_run(...).model``).
        config: its :class:`~bnn_nested.config.Config` (the architecture is rebuilt from it).
        width: a global width in (0, 1].
        example: an input batch ``(B, ...)`` (shape and one forward pass for the export).

    Returns:
        ``path``, written atomically; read it back with :func:`load_width_weights`.
    """
    plain = export_width(model, float(width), example, fold_batchnorm=fold_batchnorm)
    with torch.no_grad():
        num_classes = int(plain(example[:2]).shape[-1])
    spec = {
        "config": config.to_dict(),
        "width": float(width),
        "input_shape": [int(d) for d in example.shape[1:]],
        "num_classes": num_classes,
        "fold_batchnorm": bool(fold_batchnorm),
    }
    state = {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": WIDTH_WEIGHTS_FORMAT, "spec": spec, "state": state}, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_width_weights(path: str | Path, allow_import: bool = False) -> nn.Module:
    """Rebuild the sub-network saved by :func:`save_width_weights`; runs no code from the file.

    The file is read with ``torch.load(weights_only=True)`` (tensors and plain values only), the
    architecture is built by bnn-nested from the stored config and width, and the tensors must
    match it exactly (names and shapes).

    Raises:
        UnsafeOrInvalidWeights: the file holds pickled code (refused, never run), is not such a
            file, names ``model.name: import`` without ``allow_import``, or does not match.
    """
    from bnn_nested.config import ConfigError, build_config
    from bnn_nested.models import build_model
    from bnn_nested.training.samplers import build_sampler

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = refused_code(err)  # weights_only refused a callable: the file carries code
        if refused is not None:
            raise UnsafeOrInvalidWeights(
                f"{path}: holds code ({refused}) that was refused, never run; not a "
                "width-weights file"
            ) from None
        first = str(err).strip().splitlines()[0][:150] if str(err).strip() else type(err).__name__
        raise UnsafeOrInvalidWeights(
            f"{path}: corrupt or truncated weights file ({first})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != WIDTH_WEIGHTS_FORMAT:
        raise UnsafeOrInvalidWeights(
            f"{path}: not a width-weights file (format {WIDTH_WEIGHTS_FORMAT!r} expected)"
        )
    spec, state = blob.get("spec"), blob.get("state")
    try:
        width = float(spec["width"])
        shape = tuple(int(d) for d in spec["input_shape"])
        num_classes = int(spec["num_classes"])
        fold = bool(spec["fold_batchnorm"])
        cfg = build_config(spec["config"])
        ok = (
            0.0 < width <= 1.0
            and 0 < len(shape) <= 4
            and all(0 < d <= 4096 for d in shape)
            and 0 < num_classes <= 100_000
            and isinstance(state, dict)
            and all(isinstance(v, torch.Tensor) for v in state.values())
        )
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise UnsafeOrInvalidWeights(f"{path}: malformed spec ({str(err)[:150]})") from None
    if not ok:
        raise UnsafeOrInvalidWeights(f"{path}: malformed spec (width, input_shape or tensors)")
    if cfg.model.name == "import" and not allow_import:
        raise UnsafeOrInvalidWeights(
            f"{path}: its config imports {cfg.model.target!r} (model.name: import runs that "
            "code); pass allow_import=True only for files you trust"
        )
    with torch.random.fork_rng():  # building a model draws random initial weights
        model = build_model(
            cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, num_classes
        )
        plain = export_width(model, width, torch.zeros((2, *shape)), fold_batchnorm=fold)
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise UnsafeOrInvalidWeights(
            f"{path}: tensors do not match the architecture of its spec ({detail})"
        ) from None
    return plain.eval()
