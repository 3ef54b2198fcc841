"""From trained weights: importance ordering of every channel dimension
(docs/METHODS.md#importance-ordering).

A trained network's channels come in no particular order, so its narrow prefixes are poor. Before
nested fine-tuning, every ordered dimension is permuted so that its most important channels come
first; all coupled modules move together (producers' rows, consumers' columns, norm parameters and
statistics, depthwise filters, whole attention heads), so the permuted network computes the same
function at full width. Scores, per channel of a dimension:

- ``"l1"``: the L1 norm of the channel's rows in every producer (Li et al., *Pruning Filters for
  Efficient ConvNets*, ICLR 2017); heads: the L1 norm of the head's output-projection columns;
- ``"bn_gamma"``: ``|gamma|`` of the norm layers on the dimension (Liu et al., *Learning Efficient
  Convolutional Networks through Network Slimming*, ICCV 2017); ``"l1"`` where there is no norm;
- ``"taylor"``: first-order Taylor importance (Molchanov et al., *Importance Estimation for Neural
  Network Pruning*, CVPR 2019, eq. 8): ``sum_batches (sum_{s in channel} g_s w_s)^2``; on a
  dimension with an affine norm, of a gate after it (``g_gamma gamma + g_beta beta``, the paper's
  choice for BN networks: a producer followed by BN is scale-invariant, so its ``g . w`` carries no
  signal), else over the producers' weights and biases (heads: the output-projection columns).

Channels are sorted within each slice of a concatenation (slices keep their channels); a dimension
with a GroupNorm, or whose channels are attention heads of separate q / k / v projections, is
permuted in whole ordered groups (GroupNorm statistics and heads stay intact). Groups keep
their size; a group's importance is the sum over its channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.io import refused_code
from bnn_nested.nest.analysis import _CONV
from bnn_nested.nest.model import NestifiedModel
from bnn_nested.nest.structure import ChannelDim, Member
from bnn_nested.nn.batchnorm import _NestedBatchNorm
from bnn_nested.nn.ordering_unit import LOGIT_CLIP

Importance = Literal["l1", "bn_gamma", "taylor"]
IMPORTANCES: tuple[str, ...] = ("l1", "bn_gamma", "taylor")


# --------------------------------------------------------------------------- scores


def _rows(member: Member, size: int, values: torch.Tensor) -> torch.Tensor:
    """Sum per root channel of per-entry ``values`` (one per ``member.index`` entry)."""
    out = torch.zeros(size, dtype=torch.float64)
    return out.index_add_(0, member.root, values.double())


def _producer_l1(mod: nn.Module, member: Member, size: int) -> torch.Tensor:
    w = mod.weight.detach().flatten(1).abs().sum(1)[member.index]
    return _rows(member, size, w)


def _heads_cols(mha: nn.MultiheadAttention, t: torch.Tensor) -> torch.Tensor:
    """Per-head sum of ``t`` (shaped like the output projection weight ``(E, E)``) over its columns."""
    return t.reshape(t.shape[0], mha.num_heads, mha.head_dim).sum((0, 2))


def _score(
    net: nn.Module, dim: ChannelDim, kind: str, grads: dict[str, torch.Tensor] | None
) -> torch.Tensor:
    if dim.members[0].role == "heads":  # nn.MultiheadAttention (fused heads: producer rows)
        mha = net.get_submodule(dim.members[0].module)
        w = mha.out_proj.weight.detach()
        if kind == "taylor":
            assert grads is not None
            return grads[dim.name]
        return _heads_cols(mha, w.abs()).double()
    if kind == "bn_gamma":
        norms = [
            m
            for m in dim.members
            if m.role == "norm" and getattr(net.get_submodule(m.module), "weight", None) is not None
        ]
        if norms:
            return sum(
                _rows(m, dim.size, net.get_submodule(m.module).weight.detach().abs()[m.index])
                for m in norms
            )
        warnings.warn(
            f"importance 'bn_gamma': {dim.name} has no affine norm; using 'l1'", stacklevel=3
        )
    if kind == "taylor":
        assert grads is not None
        return grads[dim.name]
    producers = [m for m in dim.members if m.role in ("out", "depthwise")]
    return sum(_producer_l1(net.get_submodule(m.module), m, dim.size) for m in producers)


def _affine(net: nn.Module, member: Member) -> bool:
    mod = net.get_submodule(member.module)
    return getattr(mod, "weight", None) is not None and getattr(mod, "bias", None) is not None


def _taylor(
    nested: NestifiedModel, data: Iterable, max_batches: int | None
) -> dict[str, torch.Tensor]:
    """Molchanov et al. (2019) first-order Taylor scores, accumulated over ``data``."""
    net = nested.net
    scores = {d.name: torch.zeros(d.size, dtype=torch.float64) for d in nested.structure}
    was = nested.training
    nested.eval()
    try:
        for i, batch in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            x, y = batch[0], batch[1]
            nested.zero_grad(set_to_none=True)
            with torch.enable_grad():
                F.cross_entropy(nested(x), y).backward()
            for d in nested.structure:
                if d.members[0].role == "heads":
                    mha = net.get_submodule(d.members[0].module)
                    gw = mha.out_proj.weight.grad * mha.out_proj.weight.detach()
                    scores[d.name] += _heads_cols(mha, gw).double().pow(2)
                    continue
                per = torch.zeros(d.size, dtype=torch.float64)
                norms = [m for m in d.members if m.role == "norm" and _affine(net, m)]
                for m in (
                    norms
                ):  # a gate after BN: d/dz z (gamma x + beta) = g_gamma gamma + g_beta beta
                    mod = net.get_submodule(m.module)
                    gz = mod.weight.grad * mod.weight.detach() + mod.bias.grad * mod.bias.detach()
                    per += _rows(m, d.size, gz[m.index])
                for m in d.members if not norms else []:
                    if m.role not in ("out", "depthwise"):
                        continue
                    mod = net.get_submodule(m.module)
                    gw = (mod.weight.grad * mod.weight.detach()).flatten(1).sum(1)
                    if getattr(mod, "bias", None) is not None and mod.bias.grad is not None:
                        gw = gw + mod.bias.grad * mod.bias.detach()
                    per += _rows(m, d.size, gw[m.index])
                scores[d.name] += per.pow(2)
    finally:
        nested.zero_grad(set_to_none=True)
        nested.train(was)
    return scores


def importance_scores(
    nested: NestifiedModel,
    kind: Importance = "l1",
    data: Iterable | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-channel importance ``(size,)`` of every ordered dimension (root-layer channel order).

    ``data`` (batches ``(x, y)``) is needed for ``"taylor"``.
    """
    if kind not in IMPORTANCES:
        raise ValueError(f"importance must be one of {IMPORTANCES}, got {kind!r}")
    grads = None
    if kind == "taylor":
        if data is None:
            raise ValueError("importance 'taylor' needs data: labelled batches (x, y)")
        grads = _taylor(nested, data, max_batches)
    return {d.name: _score(nested.net, d, kind, grads) for d in nested.structure}


# --------------------------------------------------------------------------- permutation


def _source(member: Member, perm: torch.Tensor, length: int) -> torch.Tensor:
    """Index map along a module axis: the entries of root channel ``p`` take the values of the
    entries of root channel ``perm[p]`` (a member may cover only some root channels)."""
    src = torch.arange(length)
    roots = torch.unique(member.root)
    pos = {int(r): member.index[member.root == r] for r in roots}
    for p in roots.tolist():
        src[pos[p]] = pos[int(perm[p])]
    return src


def _take(t: torch.Tensor | None, axis: int, src: torch.Tensor) -> None:
    if t is not None and t.numel():
        t.data.copy_(t.data.index_select(axis, src.to(t.device)))


def _permute_member(net: nn.Module, member: Member, perm: torch.Tensor) -> None:
    mod = net.get_submodule(member.module)
    if member.role == "heads":
        e, d = mod.embed_dim, mod.head_dim
        head_src = torch.arange(mod.num_heads)
        head_src[member.root] = perm[member.root]
        cols = (head_src[:, None] * d + torch.arange(d)[None]).flatten()
        rows = torch.cat([cols + i * e for i in range(3)])
        _take(mod.in_proj_weight, 0, rows)
        _take(mod.in_proj_bias, 0, rows)
        _take(mod.out_proj.weight, 1, cols)
        return
    axis = 1 if member.role == "in" else 0
    if member.role in ("out", "in", "depthwise"):
        length = (
            mod.in_channels
            if member.role == "in" and isinstance(mod, _CONV)
            else mod.weight.shape[axis]
        )
    else:  # norms (BatchNorm: num_features, GroupNorm: num_channels) and PReLU
        length = getattr(mod, "num_features", None) or getattr(mod, "num_channels", None)
        if length is None:
            length = mod.weight.numel() if getattr(mod, "weight", None) is not None else 0
        if length <= int(member.index.max()):
            return  # nothing per channel (e.g. PReLU with one shared slope)
    src = _source(member, perm, length)
    if member.role in ("out", "in", "depthwise"):
        _take(mod.weight, axis, src)
        _take(getattr(mod, "log_alpha", None), axis, src)
        if axis == 0:
            _take(mod.bias, 0, src)
            gain = getattr(mod, "gain", None)  # timm's ScaledStdConv2d: a gain per output channel
            if isinstance(gain, torch.Tensor) and gain.dim() and gain.shape[0] == length:
                _take(gain, 0, src)
        return
    for name in ("weight", "bias", "running_mean", "running_var"):  # norm / other per-channel
        t = getattr(mod, name, None)
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() == length:
            _take(t, 0, src)
    if isinstance(mod, _NestedBatchNorm):
        _take(mod.calib_mean, 1, src)
        _take(mod.calib_var, 1, src)


@torch.no_grad()
def permute_dimension(nested: NestifiedModel, dim: str | ChannelDim, perm: torch.Tensor) -> None:
    """Reorder a dimension's channels: root channel ``p`` becomes old root channel ``perm[p]``, in
    every coupled module at once (the network's function is unchanged at full width)."""
    d = nested.structure[dim] if isinstance(dim, str) else dim
    perm = torch.as_tensor(perm, dtype=torch.long)
    if sorted(perm.tolist()) != list(range(d.size)):
        raise ValueError(f"perm: not a permutation of {d.size} channels")
    if d.root_slice is not None and not torch.equal(d.root_slice[perm], d.root_slice):
        raise ValueError(f"perm: {d.name}: channels may only move within their concatenation slice")
    for m in d.members:
        _permute_member(nested.net, m, perm)


def importance_permutation(
    dim: ChannelDim, score: torch.Tensor, has_group_norm: bool
) -> torch.Tensor:
    """Most important first, within each slice; whole groups when a GroupNorm (or heads of
    separate q/k/v projections) is on the dimension."""
    rg = dim.root_group if dim.root_group is not None else torch.arange(dim.size) // dim.group_size
    slices = (
        dim.root_slice if dim.root_slice is not None else torch.zeros(dim.size, dtype=torch.long)
    )
    perm = torch.arange(dim.size)
    if dim.pieces is not None:  # a GLU's pieces: channel j of every piece moves together
        order = torch.argsort(score[dim.pieces].sum(1), descending=True, stable=True)
        perm[dim.pieces] = dim.pieces[order]
        return perm
    if (
        has_group_norm
    ):  # reorder whole groups (one slice: a concatenation with GroupNorm is refused)
        per_group = torch.zeros(dim.groups, dtype=torch.float64).index_add_(0, rg, score)
        order = torch.argsort(per_group, descending=True, stable=True)
        return torch.cat([(rg == g).nonzero().flatten() for g in order.tolist()])
    for s in torch.unique(slices).tolist():
        idx = (slices == s).nonzero().flatten()
        perm[idx] = idx[torch.argsort(score[idx], descending=True, stable=True)]
    return perm


@torch.no_grad()
def order_by_importance(
    nested: NestifiedModel,
    importance: Importance = "l1",
    data: Iterable | None = None,
    max_batches: int | None = None,
) -> dict[str, torch.Tensor]:
    """Permute every ordered dimension, most important channels first; returns each dimension's
    per-group importance ``(groups,)`` after the permutation (non-increasing up to slices)."""
    scores = importance_scores(nested, importance, data, max_batches)
    out = {}
    for d in nested.structure:
        gn = any(isinstance(nested.net.get_submodule(m.module), nn.GroupNorm) for m in d.members)
        perm = importance_permutation(d, scores[d.name], gn or d.block > 1)  # whole heads move
        permute_dimension(nested, d, perm)
        rg = d.root_group if d.root_group is not None else torch.arange(d.size) // d.group_size
        out[d.name] = torch.zeros(d.groups, dtype=torch.float64).index_add_(
            0, rg, scores[d.name][perm]
        )
    return out


@torch.no_grad()
def init_ordering_from_importance(
    nested: NestifiedModel, group_importance: dict[str, torch.Tensor]
) -> None:
    """Start each ordering posterior at the importance profile: ``P(b >= k)`` = share of the ordered
    groups' importance held by groups ``k..K`` (clipped so every continuation logit is finite)."""
    for d in nested.structure:
        u = nested.unit(d.name)
        g = group_importance[d.name][d.kept :].clamp_min(0)
        total = g.sum()
        if total <= 0:
            continue
        keep = (g.flip(0).cumsum(0).flip(0) / total).float()  # P(b >= k), k = 1..K
        prev = torch.cat([keep.new_ones(1), keep[:-1]])
        beta = (keep / prev.clamp_min(1e-12)).clamp(1e-3, 1 - 1e-3)
        r = (beta.log() - (-beta).log1p()).clamp(-LOGIT_CLIP, LOGIT_CLIP)
        u.r.data.copy_(r.to(u.r))


def read_plain_state(path: str, field: str = "model.init_from") -> dict[str, torch.Tensor]:
    """A plain network's ``state_dict`` from ``path`` (``torch.save(model.state_dict(), path)``, or
    a dict with a ``"model"`` / ``"state_dict"`` entry), loaded ``weights_only`` (no code runs).

    Raises:
        ValueError: one line naming ``field`` and the file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{field}: no such file {path}") from None
    except Exception as err:  # noqa: BLE001 - unpickling errors of every kind
        refused = refused_code(err)  # weights_only refused a callable: the file carries code
        if refused is not None:
            raise ValueError(
                f"{field}: {path} is not a weights-only state dict: it holds code ({refused}) "
                "that was refused, never run; save the network with torch.save(net.state_dict(), "
                "path)"
            ) from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise ValueError(f"{field}: {path} is not a weights-only state dict ({first})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{field}: {path} does not hold a state dict of tensors")
    return state


def check_plain_state(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    path: str,
    field: str = "model.init_from",
) -> None:
    """One-line ``ValueError`` naming the first missing / unexpected / mis-shaped tensor."""
    nested_only = ("log_alpha", "calib_channels", "calib_width", "calib_mean", "calib_var")
    missing = [k for k in own if k not in state and not k.endswith(nested_only)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (
            f"missing tensor {missing[0]!r}" if missing else f"unexpected tensor {unexpected[0]!r}"
        )
        raise ValueError(f"{field}: {path} does not fit the model: {what}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise ValueError(
                f"{field}: {path}: tensor {k!r} has shape {tuple(v.shape)}, "
                f"the model needs {tuple(own[k].shape)}"
            )
        if own[k].is_floating_point() and not v.is_floating_point():
            # loading would silently convert (an int64 weight is a truncated one)
            raise ValueError(
                f"{field}: {path}: tensor {k!r} is {str(v.dtype).removeprefix('torch.')}, "
                f"the model needs floating point ({str(own[k].dtype).removeprefix('torch.')})"
            )
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"{field}: {path}: tensor {k!r} holds NaN or infinite values")


def load_plain_weights(nested: NestifiedModel, path: str) -> None:
    """Load a plain network's weights (see :func:`read_plain_state`) into the nestified copy.

    Raises:
        ValueError: one line naming the file and the first missing / unexpected / mis-shaped tensor.
    """
    state = read_plain_state(path)
    check_plain_state(state, nested.net.state_dict(), path)
    nested.net.load_state_dict(state, strict=False)
