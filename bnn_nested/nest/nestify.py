"""``nestify``: turn any PyTorch network into a nested (Bayesian) model.

How a nestified model runs at width ``r`` (docs/METHODS.md, "width structure"):

* every channel dimension ``d`` keeps its first ``kept_d + ceil(r K_d)`` groups (or the groups a
  per-dimension dict names);
* the dropped channels are *zeroed at the input of every layer that consumes the dimension* (a
  forward pre-hook multiplies the input by the dimension's mask). Producers, norms, activations,
  residual additions and depthwise convolutions act channel-wise, so the dropped channels never reach
  a consumer and the network computes exactly what the physically sliced network computes
  (:func:`~bnn_nested.nest.slicing.sliced_network`, which export, FLOPs and params use; a check at
  conversion compares the two and leaves a dimension unordered, with a warning, if they differ);
* in training, each dimension's ordering unit multiplies the same consumer inputs by its Downhill
  mask (one sample per forward pass, shared by all consumers of the dimension).

The mask costs a multiplication per consumer; the narrow network's speed comes from export.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bnn_nested.nest.analysis import _CONV, as_tuple, find_channel_dims
from bnn_nested.nest.attention import NestedMultiheadAttention
from bnn_nested.nest.structure import WidthStructure
from bnn_nested.nn.batchnorm import (
    NestedBatchNorm1d,
    NestedBatchNorm2d,
    _NestedBatchNorm,
    width_key,
)
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import (
    DEFAULT_INIT_LOG_ALPHA,
    WEIGHT_KINDS,
    NestedConv2d,
    NestedLinear,
    NestedMixin,
)
from bnn_nested.nn.ordering_unit import OrderingUnit, active_groups

#: Relative tolerance of the conversion check (max |masked - sliced| / max |output|).
CHECK_RTOL = 1e-4


class UnorderedDimensionWarning(UserWarning):
    """A channel dimension was left unordered because masking and slicing it disagreed."""


def _mask_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: multiply the consumed input by the module's current channel mask."""
    mask = getattr(module, "_nest_mask", None)
    if mask is None or not args:
        return None
    x = args[0]
    if isinstance(module, _CONV):  # channels on dim 1: (C,) or (N, C) -> (1|N, C, 1, ...)
        shape = (mask.shape[0] if mask.dim() == 2 else 1, -1) + (1,) * (x.dim() - 2)
        return (x * mask.to(x.dtype).reshape(shape),) + args[1:]
    if mask.dim() == 2 and x.dim() > 2:  # per-example mask on (N, ..., C)
        mask = mask.reshape((mask.shape[0],) + (1,) * (x.dim() - 2) + (mask.shape[1],))
    return (x * mask.to(x.dtype),) + args[1:]


def _key(name: str) -> str:
    return name.replace(".", "__")


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


class NestifiedModel(NestedModel):
    """A network made nested by :func:`nestify`: the width API of every nested model.

    Attributes:
        net: the wrapped network (its modules, with nested norms / attention / Gaussian layers).
        structure: its :class:`~bnn_nested.nest.structure.WidthStructure`.
        units: one :class:`~bnn_nested.nn.OrderingUnit` per dimension (key: name with ``.`` -> ``__``).

    A width is a float ``r in (0, 1]`` or ``{dimension name: groups kept}``.
    """

    def __init__(
        self,
        net: nn.Module,
        structure: WidthStructure,
        ordering: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.structure = structure
        self.ordering_kwargs = dict(ordering or {})
        self.units = nn.ModuleDict(
            {
                _key(d.name): OrderingUnit(d.groups, d.groups, d.kept, **self.ordering_kwargs)
                for d in structure
            }
        )
        self._active = [d.groups for d in structure]
        self._hooks: list = []
        self._install_hooks()

    # -- structure -----------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for name in self.structure.consumers():
            m = self.net.get_submodule(name)
            m._nest_mask = None
            self._hooks.append(m.register_forward_pre_hook(_mask_input))
        for d in self.structure:  # a hook (no-op here) keeps nn.TransformerEncoderLayer off its
            if d.kind == "heads":  # fused fast path, which would bypass the head mask
                m = self.net.get_submodule(d.members[0].module)
                self._hooks.append(m.register_forward_pre_hook(_mask_input))

    def leave_unordered(self, names: Sequence[str], reason: str) -> None:
        """Stop ordering the dimensions ``names`` (recorded in ``structure.unordered``)."""
        for n in names:
            self.structure.unordered[n] = reason
            del self.units[_key(n)]
        self.structure.dims = [d for d in self.structure.dims if d.name not in names]
        self._active = [d.groups for d in self.structure]
        for name, m in self.net.named_modules():
            if hasattr(m, "_nest_mask") and name not in self.structure.consumers():
                del m._nest_mask
        self._install_hooks()
        self.set_width(1.0)

    def unit(self, dim: str) -> OrderingUnit:
        return self.units[_key(dim)]  # type: ignore[return-value]

    def dims(self) -> list[str]:
        return self.structure.names()

    # -- width ---------------------------------------------------------------------------------
    def set_width(self, width: Width) -> None:
        dims = list(self.structure)
        if isinstance(width, Mapping):
            known = {d.name: d for d in dims}
            unknown = set(width) - set(known)
            if unknown:
                raise ValueError(
                    f"width: unknown dimension(s) {sorted(unknown)}; dimensions are {sorted(known)}"
                )
            for name, n in width.items():
                g = known[name].groups
                if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= g:
                    raise ValueError(
                        f"width[{name!r}]: active groups must be an int in [1, {g}], got {n!r}"
                    )
            active = [int(width.get(d.name, d.groups)) for d in dims]
        else:
            width = float(width)
            active_groups(width, 2, 0)  # validates (0, 1]
            active = [active_groups(width, d.groups, d.kept) for d in dims]
        self._active = active
        self._current_width = width
        key = width_key(width)
        for m in self.modules():
            if isinstance(m, _NestedBatchNorm):
                m.width_key = key

    def active_groups(self) -> dict[str, int]:
        """Groups kept now, per dimension."""
        return {d.name: n for d, n in zip(self.structure, self._active)}

    # -- forward -------------------------------------------------------------------------------
    def _group_masks(self, batch: int | None) -> list[torch.Tensor | None]:
        masks: list[torch.Tensor | None] = []
        for d, n in zip(self.structure, self._active):
            u = self.unit(d.name)
            m: torch.Tensor | None = None
            if self.training and u.sampling:
                m = u.sample_mask(batch if u.per_example else None)
            elif u.keep_scaling:
                m = u.channel_keep_probs()
            if n < d.groups:
                trunc = (torch.arange(d.groups, device=u.r.device) < n).to(u.r.dtype)
                m = trunc if m is None else m * trunc
            masks.append(m)
        return masks

    def _apply_masks(self, masks: list[torch.Tensor | None]) -> None:
        for name, uses in self.structure.consumers().items():
            mod = self.net.get_submodule(name)
            length = mod.in_channels if isinstance(mod, _CONV) else mod.in_features
            vec = None
            for i, member in uses:
                if masks[i] is not None:
                    v = member.group_values(masks[i], length)
                    vec = v if vec is None else vec * v
            mod._nest_mask = vec
        for d, m in zip(self.structure, masks):
            if d.kind == "heads":
                mha = self.net.get_submodule(d.members[0].module)
                mha.head_mask = None if m is None else m[..., d.members[0].group.to(m.device)]

    def _clear_masks(self) -> None:
        for name in self.structure.consumers():
            self.net.get_submodule(name)._nest_mask = None
        for d in self.structure:
            if d.kind == "heads":
                self.net.get_submodule(d.members[0].module).head_mask = None

    def forward(self, *inputs: Any, width: Width | None = None, **kwargs: Any) -> Any:
        if width is not None:
            with self.width(width):
                return self._run(*inputs, **kwargs)
        return self._run(*inputs, **kwargs)

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x)

    def _run(self, *inputs: Any, **kwargs: Any) -> Any:
        first = inputs[0] if inputs else None
        batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else None
        self._apply_masks(self._group_masks(batch))
        try:
            return self.net(*inputs, **kwargs)
        finally:
            self._clear_masks()

    # -- ordering ------------------------------------------------------------------------------
    def keep_probs(self) -> dict[str, torch.Tensor]:
        """``P(b >= k)`` of each ordered group, keyed by dimension name."""
        return {d.name: self.unit(d.name).keep_probs().detach() for d in self.structure}

    def group_keep(self, dim: str) -> torch.Tensor:
        """Keep probability of each of the dimension's groups (kept groups: 1), shape ``(G,)``."""
        return self.unit(dim).channel_keep_probs()

    def kl(self) -> torch.Tensor:
        """Ordering KL plus the weight KL, each output channel weighted by its keep probability
        (read from the width structure: the dimension the layer produces)."""
        total = next(self.parameters()).new_zeros(())
        for _, u in self.ordering_units():
            total = total + u.kl()
        for name, layer in self.net.named_modules():
            if not (isinstance(layer, NestedMixin) and layer.bayesian):
                continue
            keep = None
            found = self.structure.output_dim(name)
            if found is not None:
                i, member = found
                g = self.group_keep(self.structure.dims[i].name)
                keep = member.group_values(g, layer.weight.shape[0])
            total = total + layer.weight_kl(keep)
        return total

    def weight_kl_pairs(self):  # the structure replaces hand-written pairs
        return []

    def norm_followed_weights(self) -> list[str]:
        return [f"net.{n}" for n in self.structure.norm_followed()]

    def residual_blocks(self) -> list[list[str]]:
        """For the invariant regularizer: the producers of each residual dimension, one per branch."""
        return [[f"net.{n}"] for d in self.structure.residual_dims() for n in d.modules("out")]


def _convert_modules(net: nn.Module, weights: str, init_log_alpha: float) -> None:
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
        elif weights == "gaussian" and type(m) is nn.Linear:
            new = NestedLinear(
                m.in_features,
                m.out_features,
                m.bias is not None,
                ordered=False,
                weights="gaussian",
                init_log_alpha=init_log_alpha,
            )
        elif weights == "gaussian" and type(m) is nn.Conv2d and m.padding_mode == "zeros":
            new = NestedConv2d(
                m.in_channels,
                m.out_channels,
                m.kernel_size,
                m.stride,
                m.padding,
                m.dilation,
                m.bias is not None,
                ordered=False,
                weights="gaussian",
                init_log_alpha=init_log_alpha,
                conv_groups=m.groups,
            )
        if new is None:
            continue
        if isinstance(new, (NestedLinear, NestedConv2d)):
            new.weight, new.bias = m.weight, m.bias
            new.log_alpha = nn.Parameter(torch.full_like(m.weight, float(init_log_alpha)))
        new.train(m.training)
        _set_module(net, name, new)


def nestify(
    model: nn.Module,
    example_inputs: Any,
    *,
    groups: int = 16,
    kept: int = 2,
    weights: str = "point",
    init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
    exclude: Sequence[str] = (),
    heads: bool = True,
    ordering: dict[str, Any] | None = None,
    check: bool = True,
) -> NestifiedModel:
    """Make ``model`` nested: every coupled channel dimension ordered by a variational ordering unit.

    Args:
        model: any ``nn.Module`` (its modules are reused, not copied: parameters stay shared).
        example_inputs: a tensor or a tuple of inputs for one forward pass (batch >= 2 helps BN).
        groups: maximum ordered groups per dimension; ``kept``: always-kept leading groups.
        weights: ``"point"`` or ``"gaussian"`` (every ``Linear`` / ``Conv2d`` gets a multiplicative
            Gaussian posterior with ``log_alpha = init_log_alpha``; means are the current weights).
        exclude: module names / ``fnmatch`` patterns whose channels are never ordered.
        heads: order attention heads (``nn.MultiheadAttention``) in groups of whole heads.
        ordering: keyword arguments of every :class:`~bnn_nested.nn.OrderingUnit`.
        check: compare the masked model with the sliced network at width 0.5 on ``example_inputs``
            and leave any dimension where they differ unordered (with a warning).

    Returns:
        A :class:`NestifiedModel`: ``model(x, width=r)``, ``with model.width(r)``, per-dimension
        dicts, ``kl()``, ``calibrate_bn``, export, select and the cascade work as for the zoo.

    Example:
        >>> import torchvision
        >>> nm = nestify(torchvision.models.resnet18(), torch.randn(2, 3, 64, 64))
        >>> logits = nm(torch.randn(4, 3, 64, 64), width=0.25)
    """
    if weights not in WEIGHT_KINDS:
        raise ValueError(f"weights must be one of {WEIGHT_KINDS}, got {weights!r}")
    if groups < 2:
        raise ValueError(f"groups must be >= 2, got {groups}")
    if kept < 0:
        raise ValueError(f"kept must be >= 0, got {kept}")
    structure = find_channel_dims(model, example_inputs, groups, kept, exclude, heads)
    _convert_modules(model, weights, init_log_alpha)
    nested = NestifiedModel(model, structure, ordering)
    if check and len(structure):
        verify(nested, example_inputs)
    return nested


@torch.no_grad()
def _mismatch(nested: NestifiedModel, width: Width, example_inputs: Any) -> float:
    from bnn_nested.nest.slicing import sliced_network

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
    """Leave unordered (with a warning) every dimension whose masked and sliced networks differ."""
    half = 0.5
    if _mismatch(nested, half, example_inputs) <= rtol:
        return
    bad = []
    for d in list(nested.structure):
        n = max(1, d.groups // 2)
        if _mismatch(nested, {d.name: n}, example_inputs) > rtol:
            bad.append(d.name)
    if bad:
        warnings.warn(
            f"nestify: masking and slicing differ on {len(bad)} dimension(s) {bad[:5]}; left unordered",
            UnorderedDimensionWarning,
            stacklevel=3,
        )
        nested.leave_unordered(bad, "masked and sliced networks differ (conversion check)")
    if len(nested.structure) and _mismatch(nested, half, example_inputs) > rtol:
        names = nested.dims()
        warnings.warn(
            f"nestify: dimensions disagree together; leaving all {len(names)} unordered",
            UnorderedDimensionWarning,
            stacklevel=3,
        )
        nested.leave_unordered(
            names, "masked and sliced networks differ together (conversion check)"
        )
