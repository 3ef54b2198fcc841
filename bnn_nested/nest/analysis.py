"""Find the coupled channel dimensions of any PyTorch network.

The graph analysis is Torch-Pruning's ``DependencyGraph`` (Fang et al., *DepGraph: Towards Any
Structural Pruning*, CVPR 2023; ``torch_pruning`` on PyPI): it traces one forward pass through
autograd and groups every (module, channel axis) that must be pruned together, across residual
additions, concatenations, splits, flattening, depthwise convolutions and norms. We read its groups;
we do not re-implement the graph walk (docs/ARCHITECTURE.md says why). Our additions: which members
*consume* a dimension (where a mask must be applied so that masking equals slicing), the partition
of each dimension into ordered groups, attention heads (which Torch-Pruning treats as one embedding
width), and the dimensions we refuse to order, each with its reason.
"""

from __future__ import annotations

import fnmatch
import math
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from bnn_nested.nest.structure import ChannelDim, Member, WidthStructure
from bnn_nested.nn.utils import call_model

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)
_PER_CHANNEL = (nn.PReLU,)


def as_tuple(example_inputs: Any) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def call(model: nn.Module, inputs: Any) -> Any:
    """``model`` on ``inputs``: a dict is keyword arguments (a tokenizer's batch), a tuple / list
    positional arguments, anything else the one positional argument (as the trainer and
    ``predict`` call it: :func:`bnn_nested.nn.utils.call_model`)."""
    return call_model(model, inputs)


def trace_inputs(inputs: Any) -> Any:
    """``inputs`` as Torch-Pruning's ``build_dependency`` takes them (a dict stays keywords)."""
    return dict(inputs) if isinstance(inputs, Mapping) else as_tuple(inputs)


def first_example(inputs: Any) -> Any:
    """``inputs`` with every tensor cut to its first example (batch 1)."""
    return pytree.tree_map(
        lambda t: t[:1] if isinstance(t, torch.Tensor) and t.dim() > 0 else t, inputs
    )


def select_output(out: Any, output: Any) -> Any:
    """The part of a network's output named by ``output``: ``None`` (all of it), a key of a dict /
    ``ModelOutput`` (``"logits"``), an index of a tuple, or a callable applied to the output."""
    if output is None:
        return out
    if callable(output):
        return output(out)
    try:
        return out[output]
    except (KeyError, IndexError, TypeError):
        if isinstance(out, Mapping):
            has = f"keys {list(out.keys())}"
        elif isinstance(out, (tuple, list)):
            has = f"{len(out)} items"
        else:
            has = f"a {type(out).__name__}"
        raise ValueError(
            f"output={output!r}: the network's output has no such entry ({has})"
        ) from None


def tensor_leaves(out: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) output: a tensor, tuple, list, dict or ``ModelOutput``."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in tensor_leaves(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in tensor_leaves(v)]
    return []


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, _CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is ``<= at_most`` (at least 1)."""
    for d in range(min(n, max(1, at_most)), 0, -1):
        if n % d == 0:
            return d
    return 1


def last_weight_layer(model: nn.Module, example_inputs: Any) -> str | None:
    """Name of the last ``Linear`` / ``Conv`` called in a forward pass (the classifier)."""
    return _forward_facts(model, example_inputs)[0]


_RESHAPES = {torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten}
_SPLITS = {torch.Tensor.split, torch.split, torch.Tensor.chunk, torch.chunk}


class _HeadSplits(TorchFunctionMode):
    """Records how the outputs of linear layers are reshaped: ``(..., C) -> (..., H, d)`` splits
    the ``C`` output features into ``H`` heads of ``d`` features (separate q / k / v projections);
    ``(..., C) -> (..., 3, H, d)``, or three equal pieces of the features each reshaped to
    ``(..., H, d)`` (GPT-2), is a fused q/k/v projection."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: dict[int, tuple[str, torch.Tensor]] = {}
        self.pieces: dict[int, tuple[str, torch.Tensor, int]] = {}  # split of an output
        self.blocks: dict[str, int] = {}
        self.fused: dict[str, tuple[int, ...]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        x = args[0] if args else None
        if func in _SPLITS and isinstance(x, torch.Tensor) and isinstance(out, (tuple, list)):
            seen = self.outputs.get(id(x))
            dim = (kwargs or {}).get("dim", args[2] if len(args) > 2 else 0)
            if seen is not None and seen[1] is x and dim in (-1, x.dim() - 1):
                for piece in out:
                    self.pieces[id(piece)] = (seen[0], piece, len(out))
        if func in _RESHAPES and isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor):
            piece = self.pieces.get(id(x))
            if piece is not None and piece[1] is x and piece[2] == 3 and x.dim() >= 1:
                k = x.dim() - 1
                tail = tuple(out.shape[k:])
                if len(tail) == 2 and out.dim() == x.dim() + 1 and 1 < tail[-1] < x.shape[-1]:
                    self.fused[piece[0]] = (3, *tail)
            seen = self.outputs.get(id(x))
            if seen is not None and seen[1] is x and x.dim() >= 1:
                k = x.dim() - 1
                c = x.shape[-1]
                tail = tuple(out.shape[k:])
                if (
                    out.dim() > x.dim()
                    and tuple(out.shape[:k]) == tuple(x.shape[:k])
                    and math.prod(tail) == c
                    and 1 < tail[-1] < c
                ):
                    if len(tail) > 2:
                        self.fused[seen[0]] = tail
                    else:
                        prev = self.blocks.get(seen[0], tail[-1])
                        self.blocks[seen[0]] = prev * tail[-1] // math.gcd(prev, tail[-1])
        return out


def _forward_facts(model: nn.Module, example_inputs: Any):
    """One forward pass: the classifier (last ``Linear`` / ``Conv`` called), the head size of each
    linear layer whose output is split into heads, the fused q/k/v projections, and the names of
    the modules called."""
    order: list[str] = []
    called: set[str] = set()
    splits = _HeadSplits()

    def hook(mod, _inp, out, name):
        called.add(name)
        if isinstance(mod, (nn.Linear, *_CONV)) and not name.endswith("out_proj"):
            order.append(name)
        if isinstance(mod, nn.Linear) and isinstance(out, torch.Tensor):
            splits.outputs[id(out)] = (name, out)

    handles = [
        m.register_forward_hook(lambda m_, i_, o_, n=name: hook(m_, i_, o_, n))
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad(), splits:
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return (order[-1] if order else None), splits.blocks, splits.fused, called


def is_grn(m: nn.Module) -> bool:
    """A Global Response Normalization layer as timm writes it (ConvNeXt-V2, ``timm.layers.grn``):
    ``x + bias + weight * x * g / (mean_c g + eps)`` with ``g`` the L2 norm of each channel over
    space. Its mean over the channels couples them: on an ordered dimension its input is masked
    (a dropped channel counts as a zero in the mean) and slicing rescales it (:class:`_GRNPruner`)
    so that the sliced mean is still over the full channel count."""
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "GlobalResponseNorm"
        and isinstance(getattr(m, "eps", None), float)
        and getattr(m, "channel_dim", None) in (1, -1)
        and isinstance(w, torch.Tensor)
        and w.dim() == 1
    )


class _GRNPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's handler of a GRN (:func:`is_grn`): its ``C`` channels in, the same out.
    Keeping ``k`` of them, the sliced layer's mean over the channels is ``sum / k`` where the
    masked network's is ``sum / C`` (the dropped channels are zeros); ``weight * C / k`` and
    ``eps * C / k`` make the kept channels' outputs equal (``w x g / (sum / C + eps)``)."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        c = layer.weight.numel()
        keep = sorted(set(range(c)) - {int(i) for i in idxs})
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        with torch.no_grad():
            layer.weight.mul_(c / len(keep))
        layer.eps = layer.eps * c / len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> int:
        return layer.weight.numel()

    def get_in_channels(self, layer: nn.Module) -> int:
        return layer.weight.numel()


def channels_first(m: nn.Module) -> bool:
    """Whether a consumer's channels are on dim 1 (convolutions, a channels-first GRN)."""
    return isinstance(m, _CONV) or (is_grn(m) and m.channel_dim == 1)


def consumed_channels(m: nn.Module) -> int:
    """Input channels of a consumer (``Linear``, ``Conv``, GRN)."""
    if isinstance(m, _CONV):
        return m.in_channels
    if is_grn(m):
        return m.weight.numel()
    return m.in_features


def _role(m: nn.Module, handler: str) -> str | None:
    """Role of a dependency item, or ``None`` when it does not need our attention."""
    if is_grn(m):
        return "grn"
    if isinstance(m, (nn.Linear, *_CONV)):
        if is_depthwise(m):
            return "depthwise"
        return "out" if handler == "prune_out_channels" else "in"
    if isinstance(m, _NORM):
        return "norm"
    if isinstance(m, _PER_CHANNEL):
        return "other"
    return "unsupported"


def _reason(m: nn.Module, name: str, role: str) -> str | None:
    if isinstance(m, nn.LayerNorm):
        return f"{name}: LayerNorm normalises over this width (an embedding / residual width)"
    if isinstance(m, nn.MultiheadAttention):
        return f"{name}: attention embedding width"
    if role == "unsupported":
        return f"{name}: {type(m).__name__} is not supported on an ordered channel dimension"
    if isinstance(m, nn.GroupNorm) and m.num_channels % m.num_groups:
        return f"{name}: GroupNorm with {m.num_channels} channels in {m.num_groups} groups"
    if isinstance(m, _CONV) and m.groups > 1 and not is_depthwise(m):
        return f"{name}: grouped convolution ({m.groups} groups) on this width"
    if isinstance(m, _CONV) and m.padding_mode != "zeros":
        return f"{name}: padding_mode={m.padding_mode!r} (only 'zeros' is supported)"
    return None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def find_channel_dims(
    model: nn.Module,
    example_inputs: Any,
    groups: int = 16,
    kept: int = 2,
    exclude: Sequence[str] = (),
    heads: bool = True,
) -> WidthStructure:
    """The :class:`~bnn_nested.nest.structure.WidthStructure` of ``model``.

    Args:
        model: any ``nn.Module`` (put in ``eval()`` for the trace).
        example_inputs: a tensor or a tuple of positional inputs.
        groups: the largest number of groups per dimension (a dimension of ``C`` channels gets the
            largest divisor of ``C`` not above it, and of every ``GroupNorm``'s group count on it).
        kept: leading groups always kept (reduced to ``groups - 1`` where a dimension has fewer).
        exclude: module names or ``fnmatch`` patterns whose channels are never ordered.
        heads: order attention heads (in groups of whole heads).
        (The graph is traced from every tensor of the output, a tuple / dict / ``ModelOutput``
        included: each consumer of a dimension must be cut, even one whose result a nested model's
        ``output=`` does not select.)

    Dimensions that cannot be ordered exactly are listed in ``structure.unordered`` with a reason:
    the classifier's outputs, LayerNorm / attention embedding widths, grouped convolutions,
    unsupported modules, excluded modules.
    """

    was_training = model.training
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    classifier, blocks, fused, called = _forward_facts(model, example_inputs)
    structure = WidthStructure()
    tolerant = ExitStack()  # Torch-Pruning re-maps indices on every group query, not only at build
    tolerant.enter_context(_tolerant_reshapes())
    tolerant.enter_context(_indexed_groups())
    tolerant.enter_context(_time_limit(model, names))
    with tolerant:
        try:
            dg = _dependency_graph(model, example_inputs)
            seen: set[tuple[str, str]] = set()
            for group in _groups(dg, names, structure):
                root_dep = group[0].dep
                root = root_dep.target.module
                rname = names.get(id(root))
                if rname is None or (rname, "out") in seen or (rname, "depthwise") in seen:
                    continue
                items = []
                for it in group:
                    m = it.dep.target.module
                    n = names.get(id(m))
                    if n is None:  # an operation node (add, cat, reshape ...), not a module
                        continue
                    role = _role(m, it.dep.handler.__name__)
                    items.append((n, m, role))
                    if role in ("out", "depthwise"):
                        seen.add((n, role))
                size = len(group[0].idxs)
                structure.links.append(
                    (
                        sorted({n for n, _, r in items if r == "out"}),
                        sorted({n for n, _, r in items if r == "in"}),
                    )
                )
                reason = _unresolved(group) or _dim_reason(items, classifier, exclude, fused)
                if reason is not None:
                    structure.unordered[rname] = reason
                    continue
                dim, reason = _dimension(rname, group, size, groups, kept, names, blocks)
                if dim is None:
                    structure.unordered[rname] = reason
                    continue
                structure.dims.append(dim)
            for m in modules.values():
                node = dg.module2node.get(m) if isinstance(m, _NORM) else None
                for inp in node.inputs if node is not None else []:
                    if isinstance(inp.module, (nn.Linear, *_CONV)) and id(inp.module) in names:
                        structure.followed_by_norm.append(names[id(inp.module)])
            if heads:
                for name, m in modules.items():
                    if isinstance(m, nn.MultiheadAttention):
                        _add_heads(structure, name, m, groups, kept, exclude)
                for name, tail in fused.items():
                    _add_fused_heads(structure, name, tail, modules, groups, kept, exclude)
            _list_unsupported(structure, modules, called)
        finally:
            model.train(was_training)
    order = {n: i for i, n in enumerate(modules)}  # registration order of the naming module
    structure.dims.sort(key=lambda d: order[d.members[0].module if d.kind == "heads" else d.name])
    return structure


def _groups(dg, names: dict[int, str], structure: WidthStructure):
    """Torch-Pruning's ``get_all_groups`` (one group per unvisited Linear / Conv output), except that
    a group whose index mapping fails is recorded as unordered instead of ending the analysis."""
    visited: set[int] = set()
    for m in list(dg.module2node):
        if not isinstance(m, (nn.Linear, *_CONV)) or id(m) in visited:
            continue
        pruner = dg.get_pruner_of_module(m)
        channels = pruner.get_out_channels(m) if pruner is not None else None
        if channels is None:
            continue
        _SEARCH["indices"] = 0
        try:
            group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(channels)))
        except _GroupTooLarge as e:
            structure.unordered[names.get(id(m), str(m))] = str(e)
            visited.add(id(m))
            continue
        except Exception as e:  # noqa: BLE001 - Torch-Pruning's index mapping failed here
            structure.unordered[names.get(id(m), str(m))] = (
                f"the graph could not map its channels ({type(e).__name__} in Torch-Pruning)"
            )
            visited.add(id(m))
            continue
        for dep, _ in group:
            if dg.is_out_channel_pruning_fn(dep.handler):
                visited.add(id(dep.target.module))
        yield group


class UnsupportedModelError(ValueError):
    """The network's channel dependencies could not be analysed (one line, naming where)."""


#: Seconds the graph analysis of one network may take (``find_channel_dims``; 0: no limit). It is
#: enforced with ``SIGALRM`` where that exists and this is the main thread.
MAX_ANALYSIS_S = 300.0


class _AnalysisTimeout(BaseException):  # not an Exception: nothing on the way may swallow it
    pass


def _where(frame, names: dict[int, str]) -> str:
    """The innermost module of the model (or graph node's module) seen in a stack of frames."""
    while frame is not None:
        for v in frame.f_locals.values():
            mod = getattr(v, "module", v)
            if isinstance(mod, nn.Module) and names.get(id(mod)):
                return names[id(mod)]
        frame = frame.f_back
    return "the graph as a whole"


@contextmanager
def _time_limit(model: nn.Module, names: dict[int, str]):
    """Raise a one-line :class:`UnsupportedModelError` naming the module being analysed when the
    analysis runs over :data:`MAX_ANALYSIS_S` seconds (the alarm repeats each second, in case a
    bare ``except`` inside the tracer swallowed it)."""
    limit = MAX_ANALYSIS_S
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not limit or not usable:
        yield
        return
    fired: list[str] = []
    active = [True]  # alarms after the analysis ended (a repeat, or one queued) are ignored

    def alarm(_signum, frame):
        if not active[0]:
            return
        if not fired:
            fired.append(_where(frame, names))
        raise _AnalysisTimeout

    def unraisable(info):  # an alarm in a gc callback: Python ignores it and reports it here
        if not isinstance(info.exc_value, _AnalysisTimeout):
            previous_hook(info)  # the analysis reports running over itself (``fired``)

    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, limit, 1.0)
    try:
        try:
            yield
        finally:
            # an alarm before this line raises inside this block and is caught just below; after
            # it, none can replace the error being built (it once escaped as _AnalysisTimeout)
            active[0] = False
        if fired:  # it ran over, but the alarm's exception was swallowed (a bare except, or a gc
            raise _AnalysisTimeout  # callback, where Python ignores exceptions) before a repeat
    except BaseException:
        if not fired:
            raise
        raise UnsupportedModelError(
            f"nestify: the graph analysis of {type(model).__name__} ran over {limit:g} s (at "
            f"{fired[0]}); exclude that part or raise bnn_nested.nest.analysis.MAX_ANALYSIS_S"
        ) from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        sys.unraisablehook = previous_hook


#: Refuse a flatten index mapping larger than this (a consumer after ``flatten`` has ``C x H x W``
#: inputs: 2M covers e.g. 512 x 64 x 64; Swin's mis-inferred window reshapes exceed it and ran out
#: of memory).
MAX_MAPPED_INDICES = 1 << 21


@contextmanager
def _tolerant_reshapes():
    """Torch-Pruning maps channel indices through reshapes, concatenations and splits by inferring
    channel counts; where that inference fails (a channel shuffle, Swin's window partition and patch
    merging) it raises and the whole graph is lost. Inside this block a failing node is only marked
    unresolved: every dimension through it is then refused (:func:`_unresolved`), the rest of the
    graph is kept."""
    mapping = tp.dependency.index_mapping
    names = (
        "update_reshape_index_mapping",
        "update_concat_index_mapping",
        "update_split_index_mapping",
    )
    originals = {n: getattr(mapping, n) for n in names}

    def tolerant(fn):
        def call(graph, node):
            try:
                return fn(graph, node)
            except Exception:  # noqa: BLE001 - any failure of the inference means "unknown"
                node.module.bnn_unresolved = True
                return None

        return call

    flatten = mapping._FlattenIndexMapping.__call__

    def bounded(self, idxs):  # a mis-inferred reshape can expand indices without bound
        if not self.reverse:
            n = len(idxs) * self._stride
            if n > MAX_MAPPED_INDICES:
                raise IndexError(f"index mapping expands to {n} indices")
            _SEARCH["indices"] += n
            if _SEARCH["indices"] > MAX_GROUP_INDICES:
                raise _GroupTooLarge(
                    f"its channels expand to over {MAX_GROUP_INDICES} indices through reshapes "
                    "in the graph search; not analysed"
                )
        return flatten(self, idxs)

    for n, fn in originals.items():
        setattr(mapping, n, tolerant(fn))
    mapping._FlattenIndexMapping.__call__ = bounded
    try:
        yield
    finally:
        for n, fn in originals.items():
            setattr(mapping, n, fn)
        mapping._FlattenIndexMapping.__call__ = flatten


#: The most (module, index set) pairs one channel group may reach in the graph search; beyond it
#: the group's dimension is left unordered with a reason (:class:`_GroupTooLarge`). The largest
#: group of the timm table's passing models has 6,645 (MobileViT-v2); ReXNet's partial residuals
#: reach over 130,000 per group.
MAX_GROUP_ITEMS = 20_000


#: The most indices the reshapes (flattens) of one channel group's graph search may produce in
#: all (Visformer's attention reaches one reshape through thousands of paths, 29 million indices in
#: 60 s); beyond it the group's dimension is left unordered with a reason.
MAX_GROUP_INDICES = 4_000_000
#: Work of the current group search (reset by :func:`_groups` before each group).
_SEARCH = {"indices": 0}


class _GroupTooLarge(RuntimeError):
    """One channel group's graph search grew past a bound (its message is the reason)."""


@contextmanager
def _indexed_groups():
    """Torch-Pruning's group search asks, for every dependency it reaches, whether the group
    already holds the same (target, handler, indices) by scanning the whole group: quadratic in
    the group's size (98 % of ReXNet's analysis, profiled). Inside this block the question is a
    set lookup with the same answer, and a group growing past :data:`MAX_GROUP_ITEMS` stops the
    search for that group (:class:`_GroupTooLarge`)."""
    group_cls = tp.dependency.group.Group
    originals = (group_cls.add_dep, group_cls.has_pruning_op, group_cls.__setitem__)

    def key(dep, idxs):
        k = (dep.target, dep.handler, tuple(idxs))
        try:
            hash(k)
        except TypeError:  # an index Torch-Pruning did not make hashable: the scan decides
            return None
        return k

    def keys(self) -> set:
        if getattr(self, "_bnn_count", None) != len(self._group):  # changed another way: rebuild
            self._bnn_keys = {key(d, i) for d, i in self._group}
            self._bnn_count = len(self._group)
        return self._bnn_keys

    def add_dep(self, dep, idxs):
        if len(self._group) >= MAX_GROUP_ITEMS:
            raise _GroupTooLarge(
                f"its channels reach over {MAX_GROUP_ITEMS} (layer, index set) pairs in the graph "
                "search (index sets multiply, e.g. through residuals added to part of the "
                "channels); not analysed"
            )
        known = keys(self)
        originals[0](self, dep, idxs)
        known.add(key(dep, idxs))
        self._bnn_count = len(self._group)

    def has_pruning_op(self, dep, idxs):
        k = key(dep, idxs)
        return originals[1](self, dep, idxs) if k is None else k in keys(self)

    def setitem(self, k, v):
        originals[2](self, k, v)
        self._bnn_count = None

    group_cls.add_dep, group_cls.has_pruning_op, group_cls.__setitem__ = (
        add_dep,
        has_pruning_op,
        setitem,
    )
    try:
        yield
    finally:
        group_cls.add_dep, group_cls.has_pruning_op, group_cls.__setitem__ = originals


def _dependency_graph(model: nn.Module, example_inputs: Any):
    """Torch-Pruning's dependency graph of ``model``; its failures become one-line errors."""
    try:
        with torch.enable_grad(), _tolerant_reshapes(), warnings.catch_warnings():
            # traced through autograd; Torch-Pruning's own warnings ("Maximum recursive depth
            # reached!" on an RNN) say nothing a user can act on
            warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
            grn = {type(m): _GRNPruner() for m in model.modules() if is_grn(m)}
            return tp.DependencyGraph().build_dependency(
                model,
                example_inputs=trace_inputs(example_inputs),
                output_transform=tensor_leaves,  # every tensor of the output (no cache objects)
                verbose=False,
                customized_pruners=grn or None,
            )
    except Exception as e:  # noqa: BLE001 - any failure inside the tracer is reported alike
        where = traceback.extract_tb(e.__traceback__)[-1].name
        raise UnsupportedModelError(
            f"nestify: cannot trace the channel dependencies of {type(model).__name__}: "
            f"Torch-Pruning failed in {where} with {type(e).__name__}: {str(e)[:120]}"
        ) from e


def _unresolved(group) -> str | None:
    """A concatenation / split whose channel offsets Torch-Pruning could not infer (it then couples
    the slices one-to-one, which is wrong; seen with ``cat -> pool -> flatten -> Linear``)."""
    for it in group:
        op = it.dep.target.module
        if type(op).__name__ in ("_ConcatOp", "_SplitOp") and getattr(op, "offsets", None) is None:
            return f"{it.dep.target.name}: channel offsets of a concatenation / split unknown to the graph"
        if getattr(op, "bnn_unresolved", False):
            return f"{it.dep.target.name}: a reshape / concatenation whose channel mapping is unknown to the graph"
    return None


def _dim_reason(items, classifier: str | None, exclude: Sequence[str], fused=None) -> str | None:
    for n, _, r in items:
        if fused and n in fused and r in ("out", "depthwise"):
            return f"{n}: fused q/k/v projection (features split as {fused[n]})"
    if not any(r == "in" for _, _, r in items):
        for n, m, r in items:  # consumed by a module we cannot slice (ConvTranspose2d, RNN ...)
            if r == "unsupported" and not isinstance(m, (nn.LayerNorm, nn.MultiheadAttention)):
                return _reason(m, n, r)
        return "no layer consumes it (it reaches the model's output)"
    for n, m, r in items:
        if n == classifier and r in ("out", "depthwise"):
            return f"{n}: the classifier's outputs are never sliced"
        if r != "in" and _matches(n, exclude):  # excluding a layer keeps its outputs whole
            return f"{n}: excluded"
        reason = _reason(m, n, r)
        if reason is not None:
            return reason
    return None


def _split_pieces(rows, size: int) -> torch.Tensor | str | None:
    """Root channels that reach one index of a member together: a producer's output split in
    pieces that are then multiplied (a GLU's ``x1, x2 = fc1(x).chunk(2); fc2(act(x1) * x2)``).
    Returns ``(classes, pieces)`` root indices, row ``j`` the roots of consumer channel ``j``
    (piece ``t`` in column ``t``), or ``None`` when every index has one root, or a reason when the
    pieces are not equal and aligned (channel ``j`` of every piece at the same rank)."""
    parent = list(range(size))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    merged = False
    for _, _, _, idxs, roots in rows:
        first: dict[int, int] = {}
        for i, r in zip(idxs, roots):
            if i not in first:
                first[i] = r
                continue
            a, b = find(first[i]), find(r)
            if a != b:
                parent[max(a, b)] = min(a, b)
                merged = True
    if not merged:
        return _chunk_pieces(rows, size)
    classes: dict[int, list[int]] = {}
    for r in range(size):
        classes.setdefault(find(r), []).append(r)
    pieces = [sorted(c) for _, c in sorted(classes.items())]
    if len({len(c) for c in pieces}) != 1:
        return "a split whose pieces pair channels unevenly"
    t = torch.tensor(pieces, dtype=torch.long)
    if len(t) > 1 and not bool((t[1:] > t[:-1]).all()):
        return "a split whose pieces are not aligned"
    return t


def _chunk_pieces(rows, size: int) -> torch.Tensor | None:
    """A producer chunked in ``s`` equal pieces that are multiplied before one consumer (a GLU):
    Torch-Pruning's group then maps only one piece ``[t P, (t + 1) P)`` to the consumer's ``P``
    inputs (index ``j`` <- root ``t P + j``) and no member reads the other pieces' channels. Returns
    the pieces ``(P, s)`` (row ``j``: roots ``j, P + j, ...``), or ``None`` for any other pattern.
    The conversion check confirms the pairing on the sliced network."""
    covered: set[int] = set()
    piece = None
    for _, role, m, idxs, roots in rows:
        if role in ("out", "depthwise"):
            continue
        p = consumed_channels(m) if role == "in" else size
        if p < size and size % p == 0 and sorted(idxs) == list(range(size)) and idxs == roots:
            # the chunk not seen at all (a split of the last dim of (B, N, C)): the consumer's
            # inputs read as the producer's, index j + t P for channel j of piece t
            return torch.arange(size).reshape(size // p, p).T.contiguous()
        covered.update(roots)
        if role == "in" and piece is None and len(set(idxs)) == len(idxs) and 0 < len(idxs) < size:
            p = len(idxs)
            t, first = divmod(min(roots), p)
            if size % p == 0 and not first and all(r == t * p + i for i, r in zip(idxs, roots)):
                piece = (p, t)
    if piece is None or len(covered) == size:
        return None
    p, t = piece
    if covered != set(range(t * p, (t + 1) * p)):
        return None
    return torch.arange(size).reshape(size // p, p).T.contiguous()


def _dimension(
    rname, group, size, groups, kept, names, blocks=None
) -> tuple[ChannelDim | None, str]:
    """Partition a Torch-Pruning group into ordered groups; ``(None, reason)`` if it cannot be.

    The slices of a concatenation share one width: each producer's channels (an *atom*: the
    smallest producer coverage of a channel) are split into the same number of groups, and group
    ``k`` of the dimension is group ``k`` of every slice. Without a concatenation there is one atom.
    """
    rows = []  # (name, role, module, plain idxs, root idxs)
    for it in group:
        m = it.dep.target.module
        n = names.get(id(m))
        if n is None:
            continue
        role = _role(m, it.dep.handler.__name__)
        rows.append((n, role, m, [int(i) for i in it.idxs], [int(r) for r in it.root_idxs]))
    atom = torch.full((size,), size + 1, dtype=torch.long)  # smallest producer covering each index
    owner = torch.full((size,), -1, dtype=torch.long)
    for k, (_, role, _, _, roots) in enumerate(rows):
        if role in ("out", "depthwise"):
            cover = sorted(set(roots))
            for r in cover:
                if len(cover) < atom[r]:
                    atom[r], owner[r] = len(cover), k
    if (owner < 0).any():
        return None, "channels with no producing layer"
    sizes = {int(atom[r]) for r in range(size)}
    limit = math.gcd(*sizes)
    pieces = _split_pieces(rows, size)
    if isinstance(pieces, str):
        return None, f"{rname}: {pieces}"
    if pieces is not None:  # ordered groups are whole rows: channel j of every piece together
        if len(set(owner.tolist())) > 1:
            return None, f"{rname}: a split of a concatenation's channels"
        limit = math.gcd(limit, len(pieces))
    blocks = blocks or {}
    gns = [(n, m, idxs) for n, _, m, idxs, _ in rows if isinstance(m, nn.GroupNorm)]
    if gns and len(sizes | {size}) > 1:
        return None, f"{gns[0][0]}: GroupNorm over a concatenation"
    for n, gn, idxs in gns:  # ordered groups must be unions of the GroupNorm groups it covers
        per = gn.num_channels // gn.num_groups
        covered = {i // per for i in idxs}
        if len(set(idxs)) != per * len(covered):
            return None, f"{n}: the dimension covers part of a GroupNorm group"
        limit = math.gcd(limit, len(covered))
    block = 1
    for n, role, _, _, roots in rows:  # attention heads: ordered groups are whole heads
        d = blocks.get(n)
        if d is None or role != "out":
            continue
        if len(set(roots)) % d:
            return None, f"{n}: {len(set(roots))} features are not whole heads of {d}"
        limit = math.gcd(limit, len(set(roots)) // d)
        block = block * d // math.gcd(block, d)
    g = largest_divisor(limit, groups)
    if g < 2:
        what = "whole heads" if block > 1 else "equal groups"
        return None, f"{size} channels cannot be split into >= 2 {what}"
    root_group = torch.empty(size, dtype=torch.long)
    for k in set(owner.tolist()):
        idx = (owner == k).nonzero().flatten()  # this slice's channels, in order
        root_group[idx] = torch.arange(len(idx)) * g // len(idx)
    if pieces is not None:
        root_group[pieces] = (torch.arange(len(pieces)) * g // len(pieces))[:, None]
    for n, role, m, idxs, roots in rows:  # every GroupNorm group / head in one ordered group
        unit = (
            m.num_channels // m.num_groups
            if isinstance(m, nn.GroupNorm)
            else (blocks.get(n) if role == "out" else None)
        )
        if unit is None:
            continue
        cells: dict[int, set[int]] = {}
        for i, r in zip(idxs, roots):
            cells.setdefault(i // unit, set()).add(int(root_group[r]))
        if any(len(v) > 1 for v in cells.values()):
            kind = "GroupNorm group" if isinstance(m, nn.GroupNorm) else "attention head"
            return None, f"{n}: an ordered group would split a {kind}"
    dim = ChannelDim(rname, size, g, min(kept, g - 1), root=rname, root_group=root_group)
    dim.block = block
    dim.root_slice = owner.clone()
    if pieces is not None:  # channels move only within their piece, all pieces alike
        dim.pieces = pieces
        dim.root_slice[pieces] = torch.arange(pieces.shape[1])
    done: set[tuple[str, str]] = set()
    for n, role, m, idxs, roots in rows:
        if (n, role) in done or (role == "depthwise" and any(x.module == n for x in dim.members)):
            continue
        done.add((n, role))
        if pieces is not None and role == "in":  # a consumer of the pieces' product
            idxs = [i % consumed_channels(m) for i in idxs]
        roots_t = torch.tensor(roots, dtype=torch.long)
        dim.members.append(
            Member(
                n,
                role,
                torch.tensor(idxs, dtype=torch.long),
                root_group[roots_t],
                type(m).__name__,
                root=roots_t,
            )  # type: ignore[arg-type]
        )
    order = {
        n: i for i, n in enumerate(names.values())
    }  # named after its first-registered producer
    dim.name = min(dim.modules("out", "depthwise"), key=order.__getitem__)
    return dim, ""


#: Modules whose channels the analysis orders (or reports with a reason on their dimension).
_KNOWN = (nn.Linear, *_CONV, *_NORM, *_PER_CHANNEL, nn.LayerNorm, nn.MultiheadAttention)


#: Layer types whose widths the analysis never orders (their channels stay whole).
_UNSUPPORTED = (
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.modules.conv._ConvTransposeNd,
    nn.Bilinear,
)


def _list_unsupported(structure: WidthStructure, modules: dict[str, nn.Module], called) -> None:
    """Every layer with its own parameters that the analysis does not order and that is on no
    ordered dimension goes into ``structure.unordered`` with its reason: ``Embedding``, RNNs,
    transposed convolutions (never ordered), and layers of types it does not know (a dimension
    through one is ordered only if the conversion check passes): nothing is skipped silently."""
    on_dims = {m.module for d in structure.dims for m in d.members}
    for name, m in modules.items():
        if not name or name in on_dims or name in structure.unordered:
            continue
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        what = type(m).__name__
        if name not in called:  # a known type too: its weight may be used without calling it
            structure.unordered[name] = (
                f"{name}: {what} is not called in the example forward pass (unused, or its "
                "parameters used directly, e.g. F.linear(x, layer.weight)); its widths stay whole"
            )
        elif isinstance(m, _KNOWN):
            continue
        elif isinstance(m, _UNSUPPORTED):
            structure.unordered[name] = f"{name}: {what} is not supported; its widths stay whole"
        elif not any(True for _ in m.children()):
            structure.unordered[name] = (
                f"{name}: {what} is not a layer type the analysis knows (a dimension through it "
                "is ordered only if the conversion check passes)"
            )


def _add_heads(structure, name, m: nn.MultiheadAttention, groups, kept, exclude) -> None:
    if _matches(name, exclude):
        structure.unordered[f"{name}.heads"] = f"{name}: excluded"
        return
    if not m._qkv_same_embed_dim:
        structure.unordered[f"{name}.heads"] = f"{name}: separate q/k/v projections (kdim/vdim)"
        return
    h = m.num_heads
    g = largest_divisor(h, groups)
    if g < 2:
        structure.unordered[f"{name}.heads"] = f"{name}: {h} head(s) cannot be split into groups"
        return
    group = torch.arange(h) // (h // g)
    dim = ChannelDim(f"{name}.heads", h, g, min(kept, g - 1), kind="heads")
    dim.members = [
        Member(name, "heads", torch.arange(h), group, type(m).__name__, root=torch.arange(h))
    ]
    structure.dims.append(dim)


def _add_fused_heads(structure, name, tail, modules, groups, kept, exclude) -> None:
    """Heads of a fused q/k/v projection (timm's ``Attention``: ``qkv`` reshaped to
    ``(..., 3, H, d)``, heads attended, concatenated and fed to one output projection).

    The heads dimension has two members: the projection's rows (role ``out``: row
    ``i * H d + h d + j`` belongs to head ``h``) and the output projection's columns (role ``in``:
    the consumer whose input mask drops a head). Only the layout of timm's ``Attention`` is
    accepted: a parent module with ``num_heads == H`` and ``head_dim == d`` (or none), exactly one
    other linear child reading ``H d`` features, and no norm between the heads and that projection.
    The parent's own parameters whose last dimension is ``H`` (Swin's relative position bias
    table) are per-head and cut with the heads (:func:`~bnn_nested.nest.slicing.sliced_network`);
    the conversion check refuses a layout where that guess is wrong."""
    key = f"{name}.heads"
    parent_name = name.rpartition(".")[0]
    parent = modules.get(parent_name)
    qkv = modules[name]
    if len(tail) != 3 or tail[0] != 3 or parent is None or not isinstance(qkv, nn.Linear):
        structure.unordered[key] = f"{name}: fused projection split as {tail}, not (3, heads, d)"
        return
    _, h, d = tail
    if _matches(name, exclude) or _matches(parent_name, exclude):
        structure.unordered[key] = f"{name}: excluded"
        return
    outs = [
        (n, m)
        for n, m in parent.named_children()
        if isinstance(m, nn.Linear) and m is not qkv and m.in_features == h * d
    ]
    norm = getattr(parent, "norm", None)
    if (
        getattr(parent, "num_heads", None) != h
        or getattr(parent, "head_dim", d) != d  # Swin's WindowAttention keeps no head_dim
        or len(outs) != 1
        or not (norm is None or isinstance(norm, nn.Identity))
        or qkv.out_features != 3 * h * d
    ):
        structure.unordered[key] = (
            f"{name}: fused q/k/v projection in a {type(parent).__name__} of unknown layout"
        )
        return
    g = largest_divisor(h, groups)
    if g < 2:
        structure.unordered[key] = f"{name}: {h} head(s) cannot be split into groups"
        return
    proj = f"{parent_name}.{outs[0][0]}" if parent_name else outs[0][0]
    group = torch.arange(h) // (h // g)
    rows = torch.arange(3 * h * d)
    row_head = (rows % (h * d)) // d
    cols = torch.arange(h * d)
    col_head = cols // d
    dim = ChannelDim(key, h, g, min(kept, g - 1), kind="heads", root=name, root_group=group)
    dim.members = [
        Member(name, "out", rows, group[row_head], "Linear", root=row_head),
        Member(proj, "in", cols, group[col_head], "Linear", root=col_head),
    ]
    structure.unordered.pop(name, None)  # its channels are ordered as these heads now
    structure.dims.append(dim)
