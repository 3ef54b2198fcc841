"""Which weights does a norm-control method act on? (docs/METHODS.md#which-weights-are-norm-followed)

WRS and FixNorm rescale only weights that are *followed by a normalization layer*: batch norm (and
group / layer norm) makes the network's function invariant to the scale of such a weight, so its
norm is a free parameter that only sets the effective learning rate (Liu et al. arXiv 2102.03497,
Zhou et al. arXiv 2103.15345). Everything else (biases, norm affine parameters, ``log_alpha``,
ordering parameters, weights feeding a residual sum or the classifier) must never be rescaled.

Detection, in order of precedence:

1. ``model.norm_followed_weights() -> list[str]`` if the model declares it (module names);
2. otherwise one real forward pass on ``example_input`` with hooks: a forward hook on every weight
   layer records the output tensor it produced, and a forward pre-hook on every normalization layer
   looks up which weight layer produced its input. No ``torch.fx`` tracing, so models with dynamic
   forward code (slicing by width) work;
3. then ``include`` patterns (``fnmatch`` on module names) are added and ``exclude`` patterns removed.

Example::

    names = find_norm_followed(model, torch.randn(2, 3, 32, 32))   # ['features.0', 'features.3']
    head = find_classifier(model)                                  # 'classifier'
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

#: Module types whose output is normalized per channel / per example (scale-invariant input).
NORM_LAYER_TYPES: tuple[type[nn.Module], ...] = (_BatchNorm, nn.GroupNorm, nn.LayerNorm)
#: Module types whose ``weight`` parameter is a candidate for norm control.
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, _ConvNd)
#: Parameter names that are never decayed or rescaled (variance of the Gaussian weight posterior).
PROTECTED_PARAM_NAMES: frozenset[str] = frozenset({"log_alpha"})
#: Class name of the ordering modules (``bnn_nested.nn.OrderingUnit``); matched by name so this
#: module does not import the layer package.
ORDERING_UNIT_CLASS = "OrderingUnit"

# Autograd nodes between a weight layer's output and a norm layer's input that keep the norm
# layer's input positively homogeneous (degree 1) in the weight: shape-only ops and scaling by
# a constant. Anything else (add = residual sum, activations, a learned mask) stops the search.
_SHAPE_NODES = frozenset(
    {
        "View",
        "UnsafeView",
        "Reshape",
        "ReshapeAlias",
        "Slice",
        "Select",
        "Narrow",
        "Permute",
        "Transpose",
        "T",
        "Clone",
        "Expand",
        "Unsqueeze",
        "Squeeze",
        "AsStrided",
        "ToCopy",
        "Alias",
    }
)
_SCALE_NODES = frozenset({"Mul", "Div"})
_NODE_SUFFIX = re.compile(r"Backward\d*$")


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """All Linear / Conv layers with a ``weight`` parameter, by module name, in module order."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, WEIGHT_LAYER_TYPES)
        and isinstance(getattr(m, "weight", None), nn.Parameter)
    }


def is_ordering_module(module: nn.Module) -> bool:
    """True for ``OrderingUnit`` modules (and subclasses): their parameters are never touched."""
    return any(c.__name__ == ORDERING_UNIT_CLASS for c in type(module).__mro__)


def match_names(names: Iterable[str], patterns: Sequence[str], field: str) -> list[str]:
    """Names matching any ``fnmatch`` pattern; a pattern matching nothing raises ``ValueError``."""
    names = list(names)
    out: list[str] = []
    for pat in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(f"{field}: pattern {pat!r} matched no weight layer; have {names}")
        out.extend(h for h in hits if h not in out)
    return out


def _check_names(names: Sequence[str], layers: dict[str, nn.Module], source: str) -> list[str]:
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(
            f"{source} returned {unknown}, which are not Linear/Conv layers; have {list(layers)}"
        )
    return list(names)


def trace_norm_followed(model: nn.Module, example_input: torch.Tensor | tuple) -> list[str]:
    """Weight layers whose output feeds a normalization layer, found by one hooked forward pass.

    The pass runs in eval mode (batch-norm running statistics are not updated, dropout draws no
    random numbers) inside ``torch.random.fork_rng`` (the caller's random stream is unchanged);
    training flags are restored afterwards. A weight layer counts as norm-followed when the norm
    layer's input *is* its output tensor, or is reached from it only through shape ops (view,
    slice, permute, ...) or multiplication by a constant. A weight layer whose output also feeds
    something else (e.g. both a norm and a residual sum) is not detected as such: declare
    ``norm_followed_weights()`` or use ``exclude`` for such models.

    Args:
        model: any ``nn.Module``.
        example_input: a tensor (or tuple of positional arguments) for ``model(...)``; a batch of
            2 examples is enough.

    Returns:
        Module names, in module order.
    """
    layers = weight_layers(model)
    produced_by_tensor: dict[int, tuple[torch.Tensor, str]] = {}
    produced_by_node: dict[object, str] = {}
    found: set[str] = set()
    handles = []

    def on_output(name: str):
        def hook(_mod, _inp, out):
            if isinstance(out, torch.Tensor):
                produced_by_tensor[id(out)] = (out, name)  # keep a ref: ids stay unique
                if out.grad_fn is not None:
                    produced_by_node[out.grad_fn] = name

        return hook

    def search_graph(node) -> set[str]:
        hits: set[str] = set()
        stack, seen = [node], set()
        while stack:
            n = stack.pop()
            if n is None or n in seen:
                continue
            seen.add(n)
            if n in produced_by_node:
                hits.add(produced_by_node[n])
                continue
            kind = _NODE_SUFFIX.sub("", type(n).__name__)
            parents = [p for p, _ in n.next_functions if p is not None]
            if kind in _SHAPE_NODES or (kind in _SCALE_NODES and len(parents) == 1):
                stack.extend(parents)
        return hits

    def on_norm_input(_mod, inp):
        if not inp or not isinstance(inp[0], torch.Tensor):
            return
        x = inp[0]
        entry = produced_by_tensor.get(id(x))
        if entry is not None and entry[0] is x:
            found.add(entry[1])
        elif x.grad_fn is not None:
            found.update(search_graph(x.grad_fn))

    for name, m in layers.items():
        handles.append(m.register_forward_hook(on_output(name)))
    for m in model.modules():
        if isinstance(m, NORM_LAYER_TYPES):
            handles.append(m.register_forward_pre_hook(on_norm_input))

    args = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = {m: m.training for m in model.modules()}
    devices = [a.device for a in args if isinstance(a, torch.Tensor) and a.is_cuda]
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices[:1]), torch.enable_grad():
            model(*args)
    finally:
        for h in handles:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    return [n for n in layers if n in found]


def find_norm_followed(
    model: nn.Module,
    example_input: torch.Tensor | tuple | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """Names of weight layers whose scale a following normalization layer removes.

    Precedence: ``model.norm_followed_weights()`` if defined, else :func:`trace_norm_followed` on
    ``example_input``; then ``include`` patterns are added and ``exclude`` patterns removed
    (``fnmatch`` on module names, e.g. ``"features.*"``).

    Raises:
        ValueError: no hook, no ``example_input`` and no ``include``; a declared or included name
            is not a Linear/Conv layer; a pattern matches nothing.

    Example::

        find_norm_followed(model, torch.randn(2, 3, 8, 8), exclude=["stem.*"])
    """
    layers = weight_layers(model)
    hook = getattr(model, "norm_followed_weights", None)
    if callable(hook):
        names = _check_names(hook(), layers, "model.norm_followed_weights()")
    elif example_input is not None:
        names = trace_norm_followed(model, example_input)
    elif include:
        names = []
    else:
        raise ValueError(
            "example_input: needed to find norm-followed weights (or define "
            "model.norm_followed_weights(), or pass include patterns)"
        )
    chosen = set(names) | set(match_names(layers, include, "include"))
    chosen -= set(match_names(layers, exclude, "exclude"))
    return [n for n in layers if n in chosen]


def find_classifier(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` in module order (the final classifier).

    Raises:
        ValueError: the model has no Linear layer.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError("classifier: model has no nn.Linear layer; pass the module name")
    return names[-1]


def filter_dim(module: nn.Module) -> int:
    """Dimension of ``module.weight`` indexing output channels (0, or 1 for transposed convs)."""
    if isinstance(module, _ConvTransposeNd):
        if module.groups != 1:
            raise ValueError("granularity: 'filter' is not supported for grouped ConvTranspose")
        return 1
    return 0


def filter_norms(weight: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """L2 norm of each output filter: shape ``(weight.shape[dim],)``."""
    w = weight.transpose(0, dim) if dim else weight
    return w.reshape(w.shape[0], -1).norm(dim=1)


def rescale_(
    weight: torch.Tensor,
    target: torch.Tensor | float,
    granularity: str,
    dim: int = 0,
    eps: float = 1e-12,
) -> None:
    """In place: ``weight <- target * weight / ||weight||`` per filter or for the whole tensor.

    Args:
        weight: parameter data, shape ``(out, ...)`` (``(in, out, ...)`` with ``dim=1``).
        target: wanted norm; a scalar, or shape ``(out,)`` for ``granularity="filter"``.
        granularity: ``"filter"`` (each slice along ``dim``) or ``"layer"`` (whole tensor).
        eps: floor on the current norm (an all-zero filter stays zero).
    """
    if granularity == "layer":
        weight.mul_(target / weight.norm().clamp_min(eps))
    elif granularity == "filter":
        scale = target / filter_norms(weight, dim).clamp_min(eps)
        shape = [1] * weight.dim()
        shape[dim] = -1
        weight.mul_(scale.reshape(shape))
    else:
        raise ValueError(f"granularity: got {granularity!r}; accepted 'filter', 'layer'")


def current_norms(weight: torch.Tensor, granularity: str, dim: int = 0) -> torch.Tensor:
    """Norm(s) of ``weight`` at ``granularity``: shape ``()`` (layer) or ``(out,)`` (filter)."""
    return weight.norm() if granularity == "layer" else filter_norms(weight, dim)


def decay_parameters(
    model: nn.Module, exclude_bias_and_norm: bool = True, exclude: Sequence[str] = ()
) -> dict[str, nn.Parameter]:
    """Trainable parameters that weight decay may touch, by full name.

    Never: ``log_alpha`` parameters, parameters of ``OrderingUnit`` modules, parameters of modules
    matching ``exclude`` patterns. If ``exclude_bias_and_norm``: no biases and no normalization
    affine parameters either.
    """
    skip: set[int] = set()
    module_names = [n for n, _ in model.named_modules()]
    excluded: set[str] = set()
    for pat in exclude:
        hits = [n for n in module_names if n and fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise ValueError(f"exclude: pattern {pat!r} matched no module")
        excluded.update(hits)
    for mname, m in model.named_modules():
        if (
            is_ordering_module(m)
            or mname in excluded
            or (exclude_bias_and_norm and isinstance(m, NORM_LAYER_TYPES + (_NormBase,)))
        ):
            skip.update(id(p) for p in m.parameters())
            continue
        for pname, p in m.named_parameters(recurse=False):
            if pname in PROTECTED_PARAM_NAMES or (exclude_bias_and_norm and pname == "bias"):
                skip.add(id(p))
    return {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in skip}
