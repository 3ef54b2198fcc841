"""``nestify``: turn any PyTorch network into a nested (Bayesian) model (see
:mod:`bnn_nested.nest.model` for how it runs)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bnn_nested.nest.analysis import as_tuple, find_channel_dims
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
                ordered=False,
                weight_posterior="gaussian",
                init_log_alpha=init_log_alpha,
            )
        elif weight_posterior == "gaussian" and type(m) is nn.Conv2d and m.padding_mode == "zeros":
            kw = conv_args(m)
            del kw["padding_mode"]
            new = NestedConv2d(
                **kw, ordered=False, weight_posterior="gaussian", init_log_alpha=init_log_alpha
            )
        if new is None:
            continue
        if isinstance(new, (NestedLinear, NestedConv2d)):
            new.weight, new.bias = m.weight, m.bias
            new.log_alpha = nn.Parameter(torch.full_like(m.weight, float(init_log_alpha)))
        new.train(m.training)
        replace_module(net, name, new)


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
) -> NestifiedModel:
    """Make ``model`` nested: every coupled channel dimension ordered by a variational ordering unit.

    Args:
        model: any ``nn.Module`` (its modules are reused, not copied: parameters stay shared).
        example_inputs: a tensor or a tuple of inputs for one forward pass (batch >= 2 helps BN).
        groups: maximum ordered groups per dimension; ``kept``: always-kept leading groups.
        weight_posterior: ``"point"`` or ``"gaussian"`` (every ``Linear`` / ``Conv2d`` gets a multiplicative
            Gaussian posterior with ``log_alpha = init_log_alpha``; means are the current weights).
        exclude: module names / ``fnmatch`` patterns whose channels are never ordered.
        heads: order attention heads (``nn.MultiheadAttention``) in groups of whole heads.
        ordering: keyword arguments of every :class:`~bnn_nested.nn.OrderingUnit`.
        check: compare the masked model with the sliced network at width 0.5 on ``example_inputs``
            and leave any dimension where they differ unordered (with a warning).
        order: ``"none"`` (keep the channel order) or ``"importance"``: permute every dimension so
            its most important channels come first (:mod:`bnn_nested.nest.importance`; the function
            at full width is unchanged).
        importance: ``"l1"``, ``"bn_gamma"`` or ``"taylor"`` (needs ``data``: batches ``(x, y)``).

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
    structure = find_channel_dims(model, example_inputs, groups, kept, exclude, heads)
    _convert_modules(model, weight_posterior, init_log_alpha)
    nested = NestifiedModel(model, structure, ordering)
    if check and len(structure):
        verify(nested, example_inputs)
    if order == "importance":
        nested.group_importance = order_by_importance(nested, importance, data)  # type: ignore[arg-type]
    elif order != "none":
        raise ValueError(f"order must be one of ('none', 'importance'), got {order!r}")
    return nested


@torch.no_grad()
def _mismatch(nested: NestifiedModel, width: Width, example_inputs: Any) -> float:
    was = nested.training
    nested.eval()
    try:
        inputs = as_tuple(example_inputs)
        masked = nested(*inputs, width=width)
        plain = sliced_network(nested, width, example_inputs)
        out = plain(*inputs)
        if (
            not isinstance(masked, torch.Tensor)
            or not isinstance(out, torch.Tensor)
            or masked.shape != out.shape
        ):
            return float("inf")
        scale = masked.abs().max().clamp_min(1e-12)
        return float((masked - out).abs().max() / scale)
    except Exception:  # noqa: BLE001 - any failure of slicing means "not exact"
        return float("inf")
    finally:
        nested.train(was)


def verify(nested: NestifiedModel, example_inputs: Any, rtol: float = CHECK_RTOL) -> None:
    """Leave unordered (with a warning) every dimension whose masked and sliced networks differ.

    All dimensions are cut to half their groups at once; if the two networks differ, the set is
    bisected (a set whose halves each agree but which disagrees as a whole is left unordered as a
    whole), so finding ``k`` bad dimensions among ``n`` costs about ``2 k log2(n)`` checks.
    """

    def cut(names: list[str]) -> dict[str, int]:
        return {n: max(1, nested.structure[n].groups // 2) for n in names}

    def bad(names: list[str]) -> list[str]:
        if _mismatch(nested, cut(names), example_inputs) <= rtol:
            return []
        if len(names) == 1:
            return names
        mid = len(names) // 2
        found = bad(names[:mid]) + bad(names[mid:])
        return found or names  # only the combination disagrees

    found = bad(nested.dims())
    if found:
        warnings.warn(
            f"nestify: masking and slicing differ on {len(found)} dimension(s) {found[:5]}; "
            "left unordered",
            UnorderedDimensionWarning,
            stacklevel=3,
        )
        nested.leave_unordered(found, "masked and sliced networks differ (conversion check)")
