"""The physically smaller network a nestified model computes at one width.

A copy of the wrapped network is turned back into plain PyTorch modules (Gaussian layers keep their
means; nested batch norms take the statistics calibrated for the width), then every ordered
dimension is cut to its kept groups with Torch-Pruning (``DependencyGraph.get_pruning_group(...)
.prune()``, which removes the channels from every coupled module at once), and attention heads are
cut by :class:`~bnn_nested.nest.attention.PrunedMultiheadAttention`. The result holds only plain
modules and needs nothing of ours to run.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bnn_nested.nest.analysis import (
    _dependency_graph,
    _tolerant_reshapes,
    call,
    first_example,
)
from bnn_nested.nest.attention import NestedMultiheadAttention, PrunedMultiheadAttention
from bnn_nested.nest.model import NestifiedModel, _mask_input, replace_module, select_output
from bnn_nested.nn.batchnorm import _NestedBatchNorm, width_key
from bnn_nested.nn.model import Width
from bnn_nested.nn.nested import NestedConv2d, NestedLinear
from bnn_nested.nn.utils import conv_args


def standardized_weight(m: nn.Conv2d) -> torch.Tensor:
    """The kernel a weight-standardised convolution of timm (``StdConv2d``, ``ScaledStdConv2d``:
    NF-ResNet, NFNet, BiT) convolves with: each output channel's weights standardised over its
    inputs (``ScaledStdConv2d``: times ``gain * scale``)."""
    gain = (
        (m.gain * m.scale).view(-1) if isinstance(getattr(m, "gain", None), torch.Tensor) else None
    )
    w = m.weight.reshape(1, m.out_channels, -1)
    w = F.batch_norm(w, None, None, weight=gain, training=True, momentum=0.0, eps=m.eps)
    return w.reshape_as(m.weight)


#: timm's weight-standardised convolutions (the ``Same`` variants pad at run time: not included)
_STD_CONV = ("StdConv2d", "ScaledStdConv2d")


def _plain(m: nn.Module, key: float) -> nn.Module | None:
    """A plain copy of a nested module (``None`` when ``m`` is already plain). A weight-standardised
    convolution becomes the ``nn.Conv2d`` with its standardised kernel: the standardisation mixes
    a kernel's input channels, so the sliced network convolves with the kernel the full network
    computed (masking an input channel zeroes its contribution, slicing removes it: the same)."""
    if isinstance(m, nn.Conv2d) and type(m).__name__ in _STD_CONV:
        new = nn.Conv2d(**conv_args(m)).to(device=m.weight.device, dtype=m.weight.dtype)
        new.weight.data.copy_(standardized_weight(m))
        if m.bias is not None:
            new.bias.data.copy_(m.bias)
        return new
    if isinstance(m, NestedLinear):
        new = nn.Linear(m.in_features, m.out_features, m.bias is not None)
    elif isinstance(m, NestedConv2d):
        new = nn.Conv2d(**conv_args(m))
    elif isinstance(m, _NestedBatchNorm):
        cls = nn.BatchNorm1d if isinstance(m, nn.BatchNorm1d) else nn.BatchNorm2d
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
        if m.affine:
            new.weight.data.copy_(m.weight)
            new.bias.data.copy_(m.bias)
        if m.running_mean is not None:
            hit = ((m.calib_channels == m.num_features) & (m.calib_width == key)).nonzero()
            mean, var = (
                (m.calib_mean[hit[0, 0]], m.calib_var[hit[0, 0]])
                if len(hit)
                else (m.running_mean, m.running_var)
            )
            new.running_mean.copy_(mean)
            new.running_var.copy_(var)
        ref = m.weight if m.affine else m.running_mean
        return new.to(device=ref.device, dtype=ref.dtype)
    elif isinstance(m, NestedMultiheadAttention):
        new = nn.MultiheadAttention.__new__(nn.MultiheadAttention)
        new.__dict__.update(m.__dict__)
        new.__dict__.pop("head_mask", None)
        return new
    else:
        return None
    new.weight.data.copy_(m.weight)
    if m.bias is not None:
        new.bias.data.copy_(m.bias)
    return new.to(device=m.weight.device, dtype=m.weight.dtype)


@torch.no_grad()
def plain_copy(model: NestifiedModel, width: Width = 1.0) -> nn.Module:
    """A deep copy of ``model.net`` made of plain modules, with the BN statistics of ``width``."""
    key = width_key(width)
    net = copy.deepcopy(model.net)
    for name, m in list(net.named_modules()):
        for k, hook in list(m._forward_pre_hooks.items()):
            if hook is _mask_input:
                del m._forward_pre_hooks[k]
        m.__dict__.pop("_nest_mask", None)
        new = _plain(m, key) if name else None
        if new is not None:
            new.train(m.training)
            replace_module(net, name, new)
    return net.eval()


class SelectOutput(nn.Module):
    """``select_output(net(...), output)``: the sliced network of a model built with ``output=``."""

    def __init__(self, net: nn.Module, output: Any) -> None:
        super().__init__()
        self.net = net
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return select_output(self.net(*args, **kwargs), self.output)


#: Attributes holding an attention module's head count / inner width (transformers, timm ...)
_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head")
_WIDTH_ATTRS = ("all_head_size", "inner_dim")
_HEAD_DIM_ATTRS = ("attention_head_size", "head_dim", "head_size", "dim_head")


def _update_head_counts(net: nn.Module, structure) -> None:
    """After whole heads were cut from separate q / k / v projections, set the head count (and the
    inner width) that the attention module stores, wherever it names them as transformers / timm
    do (a module that reshapes with ``-1`` needs none of this)."""
    for d in structure:
        if d.kind != "channels" or d.block <= 1:
            continue
        for name in d.modules("out"):
            parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
            proj = net.get_submodule(name)
            hd = next((getattr(parent, a) for a in _HEAD_DIM_ATTRS if hasattr(parent, a)), None)
            if not isinstance(hd, int) or hd <= 0 or proj.out_features % hd:
                continue
            for a in _HEAD_ATTRS:
                if isinstance(getattr(parent, a, None), int):
                    setattr(parent, a, proj.out_features // hd)
            for a in _WIDTH_ATTRS:
                if isinstance(getattr(parent, a, None), int):
                    setattr(parent, a, proj.out_features)


def _linear_like(m: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    new = nn.Linear(weight.shape[1], weight.shape[0], bias is not None)
    new = new.to(device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if bias is not None:
        new.bias.data.copy_(bias)
    return new.train(m.training)


def _cut_fused_heads(net: nn.Module, d, n: int) -> None:
    """Keep the first ``n`` groups of heads of a fused q/k/v projection: its rows and the output
    projection's columns of the kept heads; the parent's ``num_heads`` / ``attn_dim`` follow."""
    qkv, proj = d.members
    keep_rows = qkv.index[qkv.group < n]
    keep_cols = proj.index[proj.group < n]
    a, b = net.get_submodule(qkv.module), net.get_submodule(proj.module)
    replace_module(net, qkv.module, _linear_like(a, a.weight[keep_rows], _rows(a.bias, keep_rows)))
    replace_module(net, proj.module, _linear_like(b, b.weight[:, keep_cols], b.bias))
    parent = net.get_submodule(qkv.module.rpartition(".")[0])
    kept = torch.unique(qkv.root[qkv.group < n])  # the kept heads, in order
    heads = int(len(kept))
    for name, p in list(parent.named_parameters(recurse=False)):
        if p.dim() >= 1 and p.shape[-1] == d.size:  # per-head (Swin's relative position bias)
            setattr(
                parent,
                name,
                nn.Parameter(p.detach()[..., kept.to(p.device)].clone(), p.requires_grad),
            )
    parent.num_heads = heads
    for attr in ("attn_dim", "split_size"):  # timm's Attention, GPT-2's attention
        if isinstance(getattr(parent, attr, None), int):
            setattr(parent, attr, heads * (a.out_features // (3 * d.size)))


def _rows(t: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t[idx]


@torch.no_grad()
def sliced_network(model: NestifiedModel, width: Width, example_inputs: Any) -> nn.Module:
    """The plain network ``model`` computes at ``width`` in eval mode, physically sliced.

    Example::

        small = sliced_network(nm, 0.25, x[:2])       # nn.Module, plain torch layers only
        torch.allclose(small(x), nm.eval()(x, width=0.25), atol=1e-5)
    """
    with model.width(width):
        active = model.active_groups()
    net = plain_copy(model, width)
    cut = [d for d in model.structure if active[d.name] < d.groups]
    channel_dims = [d for d in cut if d.kind == "channels"]
    if channel_dims:
        gn_size = {
            n: m.num_channels // m.num_groups
            for n, m in net.named_modules()
            if isinstance(m, nn.GroupNorm)
        }
        with _tolerant_reshapes():
            dg = _dependency_graph(net, example_inputs)
            for d in channel_dims:
                root = net.get_submodule(d.root)
                fn = dg.get_pruner_of_module(root).prune_out_channels
                drop = d.dropped(active[d.name])
                dg.get_pruning_group(root, fn, idxs=drop).prune()
        for n, m in net.named_modules():  # keep each GroupNorm group's size
            if isinstance(m, nn.GroupNorm):
                m.num_groups = m.num_channels // gn_size[n]
        _update_head_counts(net, channel_dims)
    for d in cut:
        if d.kind == "heads" and d.members[0].role == "out":
            _cut_fused_heads(net, d, active[d.name])
        elif d.kind == "heads":
            member = d.members[0]
            mha = net.get_submodule(member.module)
            keep = member.index[member.group < active[d.name]]
            replace_module(
                net, member.module, PrunedMultiheadAttention.from_module(mha, keep).eval()
            )
    if model.output is not None:
        return SelectOutput(net, model.output).eval()
    return net.eval()


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)  # QK^T and AV: 2 x MACs of both matmuls


def _rnn_layer_flops(x, w_ih, w_hh, *args, out_shape=None, **kwargs) -> int:
    """One direction of one recurrent layer: the input and hidden matmuls at every step."""
    steps = 1
    for n in x[:-1]:
        steps *= n
    return 2 * steps * (w_ih[0] * w_ih[1] + w_hh[0] * w_hh[1])


# CPU's attention kernel and its fused LSTM layer have no formula in FlopCounterMode (the CUDA
# attention kernels do)
_CPU_ATTENTION = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    torch.ops.aten.mkldnn_rnn_layer: _rnn_layer_flops,
}


@contextmanager
def counting_flops():
    """``FlopCounterMode`` that sees attention: PyTorch's fused Transformer fast path off (the
    counter does not see inside ``torch._transformer_encoder_layer_fwd``) and CPU's attention
    kernel counted like the CUDA ones."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    counter = FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION)
    try:
        with counter, torch.no_grad():
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def network_flops(net: nn.Module, example_inputs: Any) -> int:
    """FLOPs (= 2 x MACs) of one forward pass of ``net`` on ``example_inputs`` (whole batch)."""
    # FlopCounterMode's module tracker fails on a parameter fed to a submodule as it is (timm's
    # PiT / CaiT class tokens) while it requires grad under no_grad: count without grads
    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        with counting_flops() as counter:
            call(net, example_inputs)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return int(counter.get_total_flops())


def sliced_cost(model: NestifiedModel, width: Width, example_inputs: Any) -> tuple[int, int]:
    """``(FLOPs per example, parameters)`` of the sliced network (FLOPs = 2 x MACs, counted by
    ``torch.utils.flop_counter`` on one example)."""
    net = sliced_network(model, width, example_inputs)
    return network_flops(net, first_example(example_inputs)), sum(
        p.numel() for p in net.parameters()
    )
