"""``nestify``: turn any PyTorch network into a nested (Bayesian) model (see
:mod:`bnn_nested.nest.model` for how it runs)."""

from __future__ import annotations

import copy
import random
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bnn_nested.nest.analysis import call, find_channel_dims, tensor_leaves
from bnn_nested.nest.attention import NestedMultiheadAttention
from bnn_nested.nest.importance import order_by_importance
from bnn_nested.nest.model import NestifiedModel, replace_module
from bnn_nested.nest.slicing import sliced_network
from bnn_nested.nn.batchnorm import NestedBatchNorm1d, NestedBatchNorm2d
from bnn_nested.nn.model import Width
from bnn_nested.nn.nested import DEFAULT_INIT_LOG_ALPHA, WEIGHT_KINDS, NestedConv2d, NestedLinear
from bnn_nested.nn.utils import conv_args

#: Relative tolerance of the conversion check (max |masked - sliced| / max |output|).
CHECK_RTOL = 1e-4


class UnorderedDimensionWarning(UserWarning):
    """A channel dimension was left unordered because masking and slicing it disagreed."""


def _convert_modules(net: nn.Module, weight_posterior: str, init_log_alpha: float) -> None:
    """Swap norms, attention and (for Gaussian weights) linear / conv layers for nested versions
    holding the same parameter objects."""
    for name, m in list(net.named_modules()):
        if not name:
            continue
        new: nn.Module | None = None
        if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
            cls = NestedBatchNorm1d if isinstance(m, nn.BatchNorm1d) else NestedBatchNorm2d
            new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            new.weight, new.bias = m.weight, m.bias
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(new, b, getattr(m, b))
        elif type(m) is nn.MultiheadAttention:
            new = NestedMultiheadAttention.from_module(m)
        elif weight_posterior == "gaussian" and type(m) is nn.Linear:
            new = NestedLinear(
                m.in_features,
                m.out_features,
                m.bias is not None,
                weight_posterior="gaussian",
                init_log_alpha=init_log_alpha,
            )
        elif weight_posterior == "gaussian" and type(m) is nn.Conv2d and m.padding_mode == "zeros":
            kw = conv_args(m)
            del kw["padding_mode"]
            new = NestedConv2d(**kw, weight_posterior="gaussian", init_log_alpha=init_log_alpha)
        if new is None:
            continue
        if isinstance(new, (NestedLinear, NestedConv2d)):
            new.weight, new.bias = m.weight, m.bias
            new.log_alpha = nn.Parameter(torch.full_like(m.weight, float(init_log_alpha)))
        new.train(m.training)
        replace_module(net, name, new)


def _conv1d_as_linear(net: nn.Module) -> None:
    """Replace transformers' ``Conv1D`` (GPT-2: ``x @ W + b`` with ``W`` of shape ``(in, out)``)
    by the equivalent ``nn.Linear`` (the weight transposed: new parameter tensors)."""
    for name, m in list(net.named_modules()):
        w = getattr(m, "weight", None)
        if type(m).__name__ != "Conv1D" or not isinstance(w, torch.Tensor) or w.dim() != 2:
            continue
        if getattr(m, "nf", w.shape[1]) != w.shape[1]:
            continue
        lin = nn.Linear(w.shape[0], w.shape[1], bias=m.bias is not None)
        lin = lin.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
            if m.bias is not None:
                lin.bias.copy_(m.bias)
        lin.train(m.training)
        replace_module(net, name, lin)


def nestify(
    model: nn.Module,
    example_inputs: Any,
    *,
    groups: int = 16,
    kept: int = 2,
    weight_posterior: str = "point",
    init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
    exclude: Sequence[str] = (),
    heads: bool = True,
    ordering: dict[str, Any] | None = None,
    check: bool = True,
    order: str = "none",
    importance: str = "l1",
    data: Any = None,
    output: Any = None,
) -> NestifiedModel:
    """Make ``model`` nested: every coupled channel dimension ordered by a variational ordering unit.

    Args:
        model: any ``nn.Module`` (its modules are reused, not copied: parameters stay shared, except
            that transformers' ``Conv1D`` layers become ``nn.Linear`` with the weight transposed).
        example_inputs: inputs of one forward pass (batch >= 2 helps BN): a tensor, a tuple of
            positional inputs, or a dict of keyword inputs (a tokenizer's batch).
        groups: maximum ordered groups per dimension; ``kept``: always-kept leading groups.
        weight_posterior: ``"point"`` or ``"gaussian"`` (every ``Linear`` / ``Conv2d`` gets a multiplicative
            Gaussian posterior with ``log_alpha = init_log_alpha``; means are the current weights).
        exclude: module names / ``fnmatch`` patterns whose channels are never ordered.
        heads: order attention heads (``nn.MultiheadAttention``) in groups of whole heads.
        ordering: keyword arguments of every :class:`~bnn_nested.nn.OrderingUnit`.
        check: compare the masked model with the sliced network on ``example_inputs`` at several
            cuts (one group, half, all but one, random allocations), on a copy whose constant
            (zero / one / near-zero initialised) parameters are re-drawn, and leave any dimension
            where they differ unordered (with a warning); see :func:`verify`.
        order: ``"none"`` (keep the channel order) or ``"importance"``: permute every dimension so
            its most important channels come first (:mod:`bnn_nested.nest.importance`; the function
            at full width is unchanged).
        importance: ``"l1"``, ``"bn_gamma"`` or ``"taylor"`` (needs ``data``: batches ``(x, y)``).
        output: what the model returns when the network's output is not one tensor: a key of a
            dict / ``ModelOutput`` (``"logits"``), an index of a tuple, or a callable of the output
            (``None``: the output as it is).

    Returns:
        A :class:`NestifiedModel`: ``model(x, width=r)``, ``with model.width(r)``, per-dimension
        dicts, ``kl()``, ``recalibrate_bn``, export, select and the cascade work as for the zoo.

    Example:
        >>> import torchvision
        >>> nm = nestify(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))
        >>> logits = nm(torch.randn(4, 3, 64, 64), width=0.25)
    """
    if weight_posterior not in WEIGHT_KINDS:
        raise ValueError(
            f"weight_posterior must be one of {WEIGHT_KINDS}, got {weight_posterior!r}"
        )
    if groups < 2:
        raise ValueError(f"groups must be >= 2, got {groups}")
    if kept < 0:
        raise ValueError(f"kept must be >= 0, got {kept}")
    _conv1d_as_linear(model)
    structure = find_channel_dims(model, example_inputs, groups, kept, exclude, heads)
    _convert_modules(model, weight_posterior, init_log_alpha)
    nested = NestifiedModel(model, structure, ordering, output)
    if output is not None:  # a wrong name fails here, in one line, not in the first train step
        with torch.no_grad():
            was = nested.training
            nested.eval()
            try:
                call_nested(nested, example_inputs, None)
            finally:
                nested.train(was)
    if check and len(structure):
        verify(nested, example_inputs)
    if order == "importance":
        nested.group_importance = order_by_importance(nested, importance, data)  # type: ignore[arg-type]
    elif order != "none":
        raise ValueError(f"order must be one of ('none', 'importance'), got {order!r}")
    return nested


def call_nested(nested: NestifiedModel, inputs: Any, width: Width | None) -> Any:
    if isinstance(inputs, Mapping):
        return nested(**inputs, width=width)
    return nested(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)), width=width)


@torch.no_grad()
def mismatch(nested: NestifiedModel, width: Width, example_inputs: Any) -> float:
    """Largest relative difference ``max |masked - sliced| / max |masked|`` over the floating
    output tensors, in eval mode (``inf`` when slicing fails or the outputs do not match up)."""
    was = nested.training
    nested.eval()
    try:
        masked = tensor_leaves(call_nested(nested, example_inputs, width))
        plain = sliced_network(nested, width, example_inputs)
        out = tensor_leaves(call(plain, example_inputs))
        if len(masked) != len(out) or not masked:
            return float("inf")
        worst = 0.0
        for a, b in zip(masked, out):
            if a.shape != b.shape:
                return float("inf")
            if not a.is_floating_point():
                if not torch.equal(a, b):
                    return float("inf")
                continue
            if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
                return float("inf")
            scale = a.abs().max().clamp_min(1e-12)
            worst = max(worst, float((a - b).abs().max() / scale))
        return worst
    except Exception:  # noqa: BLE001 - any failure of slicing means "not exact"
        return float("inf")
    finally:
        nested.train(was)


_mismatch = mismatch


def _near_constant(p: torch.Tensor) -> bool:
    """A tensor as initialised to a constant (zeros, ones, a small LayerScale) or to an identity:
    it can hide a channel-mixing operation (a GRN whose gamma and beta are zero is the identity)."""
    if p.numel() == 0 or not p.is_floating_point():
        return False
    t = p.detach()
    if float(t.abs().max()) < 1e-3 or float(t.max() - t.min()) <= 1e-6 * max(
        1.0, float(t.abs().max())
    ):
        return True
    return (
        t.dim() == 2
        and t.shape[0] == t.shape[1]
        and torch.equal(t, torch.eye(len(t), dtype=t.dtype))
    )


@torch.no_grad()
def redrawn_copy(nested: NestifiedModel, seed: int = 0) -> NestifiedModel:
    """A copy of ``nested`` whose near-constant / identity-initialised parameters (not the ordering
    units') are re-drawn as ``p + N(0, s^2)``, ``s = 0.5 max(1, mean |p|)`` (seeded)."""
    probe = copy.deepcopy(nested)
    gen = torch.Generator().manual_seed(seed)
    for p in probe.net.parameters():
        if _near_constant(p):
            s = 0.5 * max(1.0, float(p.detach().abs().mean()))
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * s
            p.add_(noise.to(device=p.device, dtype=p.dtype))
    return probe


def check_cuts(nested: NestifiedModel, seed: int = 0, allocations: int = 2) -> list[dict[str, int]]:
    """The cuts :func:`verify` checks: every dimension at one group, half its groups and all but one
    group, then ``allocations`` random per-dimension allocations (seeded)."""
    dims = list(nested.structure)
    rng = random.Random(seed)
    cuts = [
        {d.name: 1 for d in dims},
        {d.name: max(1, d.groups // 2) for d in dims},
        {d.name: d.groups - 1 for d in dims},
    ]
    cuts += [{d.name: rng.randint(1, d.groups - 1) for d in dims} for _ in range(allocations)]
    unique: list[dict[str, int]] = []
    for c in cuts:
        if c not in unique:
            unique.append(c)
    return unique


def find_inexact(
    nested: NestifiedModel,
    example_inputs: Any,
    rtol: float = CHECK_RTOL,
    *,
    redraw: bool = True,
    seed: int = 0,
    cuts: list[dict[str, int]] | None = None,
) -> list[str]:
    """The dimensions whose masked and sliced networks differ at one of ``cuts`` (default
    :func:`check_cuts`), checked on :func:`redrawn_copy` when ``redraw``. All dimensions are cut at
    once; where the networks differ the set is bisected (a set whose halves each agree but which
    disagrees as a whole is reported as a whole)."""
    probe = nested
    if redraw:
        probe = redrawn_copy(nested, seed)
        full = {d.name: d.groups for d in nested.structure}
        if mismatch(probe, full, example_inputs) > rtol:  # re-drawing broke the network itself
            probe = nested
    found: list[str] = []
    for cut in cuts if cuts is not None else check_cuts(nested, seed):

        def bad(names: list[str], cut: dict[str, int] = cut) -> list[str]:
            if not names or mismatch(probe, {n: cut[n] for n in names}, example_inputs) <= rtol:
                return []
            if len(names) == 1:
                return names
            mid = len(names) // 2
            return (bad(names[:mid]) + bad(names[mid:])) or names  # only the combination

        found += bad([n for n in probe.dims() if n not in found and n in cut])
    return found


def verify(
    nested: NestifiedModel,
    example_inputs: Any,
    rtol: float = CHECK_RTOL,
    *,
    redraw: bool = True,
    seed: int = 0,
) -> None:
    """Leave unordered (with a warning) every dimension whose masked and sliced networks differ
    (:func:`find_inexact`: several cuts, near-constant parameters re-drawn on a copy)."""
    found = find_inexact(nested, example_inputs, rtol, redraw=redraw, seed=seed)
    if found:
        warnings.warn(
            f"nestify: masking and slicing differ on {len(found)} dimension(s) {found[:5]}; "
            "left unordered",
            UnorderedDimensionWarning,
            stacklevel=3,
        )
        nested.leave_unordered(found, "masked and sliced networks differ (conversion check)")
