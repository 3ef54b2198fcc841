"""The model ``nestify`` returns: any network, run at any width by masking its consumers.

How a nestified model runs at width ``r`` (docs/METHODS.md#width-structure):

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

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from bnn_nested.nest.analysis import channels_first, consumed_channels, select_output
from bnn_nested.nest.structure import WidthStructure
from bnn_nested.nn.batchnorm import _NestedBatchNorm, width_key
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit, active_groups


def _mask_input(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: multiply the consumed input by the module's current channel mask."""
    mask = getattr(module, "_nest_mask", None)
    if mask is None or not args:
        return None
    x = args[0]
    if channels_first(module):  # channels on dim 1: (C,) or (N, C) -> (1|N, C, 1, ...)
        shape = (mask.shape[0] if mask.dim() == 2 else 1, -1) + (1,) * (x.dim() - 2)
        return (x * mask.to(x.dtype).reshape(shape),) + args[1:]
    if mask.dim() == 2 and x.dim() > 2:  # per-example mask on (N, ..., C)
        mask = mask.reshape((mask.shape[0],) + (1,) * (x.dim() - 2) + (mask.shape[1],))
    return (x * mask.to(x.dtype),) + args[1:]


def _first_tensor(inputs: tuple, kwargs: dict) -> torch.Tensor | None:
    for x in (*inputs, *kwargs.values()):
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return x
    return None


def _key(name: str) -> str:
    return name.replace(".", "__")


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where ``root.get_submodule(name)`` is (``name`` dotted, non-empty)."""
    parent, _, attr = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, new)


class NestifiedModel(NestedModel):
    """A network made nested by :func:`nestify`: the width API of every nested model.

    Attributes:
        net: the wrapped network (its modules, with nested norms / attention / Gaussian layers).
        structure: its :class:`~bnn_nested.nest.structure.WidthStructure`.
        units: one :class:`~bnn_nested.nn.OrderingUnit` per dimension (key: name with ``.`` -> ``__``).

    A width is a float ``r in (0, 1]`` or ``{dimension name: groups kept}``. ``output`` names the
    part of the network's output the model returns (:func:`select_output`; ``None``: all of it).
    """

    def __init__(
        self,
        net: nn.Module,
        structure: WidthStructure,
        ordering: dict[str, Any] | None = None,
        output: Any = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.output = output
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
            if d.members[0].role == "heads":  # fused fast path, which would bypass the head mask
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

    def ordering_units(self) -> Iterator[tuple[str, OrderingUnit]]:
        """``(dimension name, unit)`` pairs (reports and allocations speak of dimensions)."""
        for d in self.structure:
            yield d.name, self.unit(d.name)

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
            if u.draws_mask(self.training):
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
            length = consumed_channels(mod)
            vec = None
            for i, member in uses:
                if masks[i] is not None:
                    v = member.group_values(masks[i], length)
                    vec = v if vec is None else vec * v
            mod._nest_mask = vec
        for d, m in zip(self.structure, masks):
            if d.members[0].role == "heads":
                mha = self.net.get_submodule(d.members[0].module)
                mha.head_mask = None if m is None else m[..., d.members[0].group.to(m.device)]

    def _clear_masks(self) -> None:
        for name in self.structure.consumers():
            self.net.get_submodule(name)._nest_mask = None
        for d in self.structure:
            if d.members[0].role == "heads":
                self.net.get_submodule(d.members[0].module).head_mask = None

    def forward(self, *inputs: Any, width: Width | None = None, **kwargs: Any) -> Any:
        if width is not None:
            with self.width(width):
                return self._run(*inputs, **kwargs)
        return self._run(*inputs, **kwargs)

    def _run(self, *inputs: Any, **kwargs: Any) -> Any:
        first = _first_tensor(inputs, kwargs)
        batch = first.shape[0] if first is not None else None
        self._apply_masks(self._group_masks(batch))
        try:
            out = self.net(*inputs, **kwargs)
        finally:
            self._clear_masks()
        return select_output(out, self.output)

    # -- ordering ------------------------------------------------------------------------------
    def keep_probs(self) -> dict[str, torch.Tensor]:
        """``P(b >= k)`` of each ordered group, keyed by dimension name."""
        return {d.name: self.unit(d.name).keep_probs().detach() for d in self.structure}

    def weight_kl(self, keep: str | float = "posterior") -> torch.Tensor:
        """The weight part of :meth:`~bnn_nested.nn.NestedModel.kl`: every Gaussian layer's KL,
        each output channel weighted as ``keep`` says (the channel's dimension, and so its ordering
        unit, is read from the width structure; 0 for point weights)."""
        total = next(self.parameters()).new_zeros(())
        for name, layer in self.net.named_modules():
            if not (isinstance(layer, NestedMixin) and layer.bayesian):
                continue
            channel = None
            found = self.structure.output_dim(name)
            if found is not None:
                i, member = found
                g = self.unit(self.structure.dims[i].name).channel_keep(keep)
                if g is not None:
                    channel = member.group_values(g, layer.weight.shape[0])
            total = total + layer.weight_kl(channel)
        return total

    def norm_followed_weights(self) -> list[str]:
        return [f"net.{n}" for n in self.structure.norm_followed()]

    def residual_blocks(self) -> list[list[str]]:
        """The layers of each residual branch, in order (for the invariant regularizer)."""
        return [[f"net.{n}" for n in chain] for chain in self.structure.residual_branches()]
