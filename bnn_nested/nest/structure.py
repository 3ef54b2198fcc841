"""The width structure of a network: its *channel dimensions* and which modules each one touches.

A channel dimension is a set of (module, axis) pairs that must share one active width: the outputs
of the layers that produce it, the norm layers on it, every branch joined to it by a residual
addition, both sides of a depthwise convolution, the slices of a concatenation, and the inputs of
the layers that consume it. One ordering unit orders one dimension: it keeps the first
``kept + n`` of the dimension's ``groups`` equal-sized channel groups (see
docs/METHODS.md#width-structure).

Every piece of the library that needs to know "which layers does this unit order" reads this one
structure: the keep-probability weighting of the weight KL, per-dimension allocation, the weights
followed by a norm (WRS / FixNorm), residual branches (invariant regularizer), FLOPs / params, and
export.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch

#: How a module touches a dimension.
#: ``out``: its output channels are the dimension (a producer: ``Linear`` / ``Conv``);
#: ``in``: it mixes the dimension's channels on its input (a consumer: ``Linear`` / ``Conv``);
#: ``norm``: a per-channel norm or affine layer on the dimension (``BatchNorm``, ``GroupNorm``);
#: ``depthwise``: a depthwise convolution (channel ``c`` in -> channel ``c`` out);
#: ``heads``: the attention heads of a ``MultiheadAttention`` (q/k/v rows and out-projection
#: columns of a head move together);
#: ``grn``: a Global Response Normalization layer (ConvNeXt-V2): per-channel weights and a mean
#: over the channels, so its input is masked like a consumer's (``analysis.is_grn``).
Role = Literal["out", "in", "norm", "depthwise", "heads", "grn", "other"]


@dataclass
class Member:
    """One module on a dimension: its name, role, and which of its indices belong to which group.

    ``index[j]`` is an index along the module's channel axis for this role and ``group[j]`` the
    dimension's group it belongs to (a consumer after ``flatten`` has ``H * W`` indices per channel;
    a consumer after a concatenation has offset indices).
    """

    module: str
    role: Role
    index: torch.Tensor
    group: torch.Tensor
    kind: str = ""  # module class name (for reports)
    root: torch.Tensor | None = (
        None  # root-layer channel of each entry (``index[j]`` <- ``root[j]``)
    )

    def group_values(self, group_mask: torch.Tensor, length: int) -> torch.Tensor:
        """Spread per-group values ``(..., G)`` over this member's axis of ``length`` entries
        (entries outside the dimension get 1)."""
        lead = group_mask.shape[:-1]
        out = group_mask.new_ones(lead + (length,))
        out[..., self.index.to(group_mask.device)] = group_mask[
            ..., self.group.to(group_mask.device)
        ]
        return out


@dataclass
class ChannelDim:
    """A coupled channel dimension ordered by one unit.

    Attributes:
        name: the dimension's name (its first-registered producer, or ``<mha>.heads``).
        size: channels (or heads) in the dimension.
        groups: equal-sized groups it is ordered in (``size % groups == 0``).
        kept: leading groups that are always kept (the old ``frozen``).
        members: the modules on it.
    """

    name: str
    size: int
    groups: int
    kept: int
    members: list[Member] = field(default_factory=list)
    kind: Literal["channels", "heads"] = "channels"
    #: the layer whose output channels index the dimension (Torch-Pruning's root; for a
    #: concatenation, a layer that sees every slice) and the group of each of its channels
    root: str = ""
    root_group: torch.Tensor | None = None
    #: which slice of a concatenation each root channel belongs to (one value without one)
    root_slice: torch.Tensor | None = None
    #: channels that must stay together (an attention head's features): every ordered group is
    #: whole blocks, and importance ordering moves whole groups
    block: int = 1
    #: a producer split in pieces that are multiplied (a GLU's ``chunk(2)``): row ``j`` holds the
    #: root channels (one per piece) of consumer channel ``j``; they share a group and move together
    pieces: torch.Tensor | None = None

    def dropped(self, n: int) -> list[int]:
        """Root-layer channel indices dropped when ``n`` groups are kept."""
        rg = (
            self.root_group
            if self.root_group is not None
            else torch.arange(self.size) // self.group_size
        )
        return (rg >= n).nonzero().flatten().tolist()

    @property
    def group_size(self) -> int:
        return self.size // self.groups

    def modules(self, *roles: str) -> list[str]:
        """Names of the member modules with one of ``roles`` (all when none given)."""
        return [m.module for m in self.members if not roles or m.role in roles]

    def member(self, module: str, role: str) -> Member | None:
        for m in self.members:
            if m.module == module and m.role == role:
                return m
        return None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "groups": self.groups,
            "kept": self.kept,
            "members": [[m.module, m.role] for m in self.members],
        }


@dataclass
class WidthStructure:
    """All channel dimensions of a network, plus the dimensions left unordered and why."""

    dims: list[ChannelDim] = field(default_factory=list)
    unordered: dict[str, str] = field(default_factory=dict)  # dimension name -> reason
    followed_by_norm: list[str] = field(default_factory=list)  # see norm_followed()
    #: (producers, consumers) of every coupled group, ordered or not (see residual_branches())
    links: list[tuple[list[str], list[str]]] = field(default_factory=list)

    def __iter__(self) -> Iterator[ChannelDim]:
        return iter(self.dims)

    def __len__(self) -> int:
        return len(self.dims)

    def __getitem__(self, name: str) -> ChannelDim:
        for d in self.dims:
            if d.name == name:
                return d
        raise KeyError(f"width: unknown dimension {name!r}; dimensions are {self.names()}")

    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def consumers(self) -> dict[str, list[tuple[int, Member]]]:
        """``{module: [(dim index, member), ...]}`` for every module that consumes a dimension."""
        out: dict[str, list[tuple[int, Member]]] = {}
        for i, d in enumerate(self.dims):
            for m in d.members:
                if m.role in ("in", "grn"):
                    out.setdefault(m.module, []).append((i, m))
        return out

    def output_dim(self, module: str) -> tuple[int, Member] | None:
        """The dimension whose channels ``module`` produces (role ``out`` or ``depthwise``)."""
        for i, d in enumerate(self.dims):
            for m in d.members:
                if m.module == module and m.role in ("out", "depthwise"):
                    return i, m
        return None

    def norm_followed(self) -> list[str]:
        """Linear / conv layers whose output goes directly into a norm layer (scale-invariant
        weights, for WRS and FixNorm), whether or not their dimension is ordered."""
        return list(self.followed_by_norm)

    def residual_dims(self) -> list[ChannelDim]:
        """Dimensions joined by a residual addition (more than one producer)."""
        return [d for d in self.dims if len(d.modules("out", "depthwise")) > 1]

    def residual_branches(self, max_depth: int = 8) -> list[list[str]]:
        """The linear / conv layers on each residual branch, in order: for every layer whose output
        joins an addition (a group with several producers), the chain back through single-producer
        groups to the layer that reads a residual stream (or the input). Chains of one layer (a 1x1
        shortcut) are left out."""
        consumed_in: dict[str, int] = {}
        for i, (_, consumers) in enumerate(self.links):
            for c in consumers:
                consumed_in.setdefault(c, i)
        branches = []
        for producers, _ in self.links:
            if len(producers) < 2:
                continue
            for p in producers:
                chain = [p]
                for _ in range(max_depth):
                    g = consumed_in.get(chain[0])
                    if g is None or len(self.links[g][0]) != 1:
                        break
                    chain.insert(0, self.links[g][0][0])
                if len(chain) >= 2:
                    branches.append(chain)
        return branches

    def to_dict(self) -> dict:
        return {"dims": [d.to_dict() for d in self.dims], "unordered": dict(self.unordered)}
