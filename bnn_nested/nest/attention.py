"""Attention with ordered heads.

:class:`NestedMultiheadAttention` is an ``nn.MultiheadAttention`` (same parameters) whose heads can
be masked: a dropped head's output is zeroed before the output projection, which is exactly what
removing the head computes, because heads are independent until that projection.
:class:`PrunedMultiheadAttention` is the physically smaller module an export uses: ``nn.Linear``
projections for the kept heads and ``F.scaled_dot_product_attention`` (``nn.MultiheadAttention``
cannot hold fewer heads than ``embed_dim / head_dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NestedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with a head mask (``None``, ``(H,)`` or ``(N, H)``) set by the model."""

    head_mask: torch.Tensor | None = None

    @classmethod
    def from_module(cls, m: nn.MultiheadAttention) -> NestedMultiheadAttention:
        """Take over ``m``'s parameters (the same ``Parameter`` objects, not copies)."""
        new = cls.__new__(cls)
        new.__dict__.update(m.__dict__)
        new._modules = dict(m._modules)
        new._parameters = dict(m._parameters)
        new._buffers = dict(m._buffers)
        new.head_mask = None
        return new

    def forward(  # type: ignore[override]
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=True,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        mask = self.head_mask
        if mask is None:
            return super().forward(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        d = self.head_dim
        channel_mask = mask.repeat_interleave(d, dim=-1)  # (E,) or (N, E)
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        per_example = channel_mask.dim() == 2
        if per_example:  # concatenated heads first (identity projection), then mask, project
            w_out = torch.eye(self.embed_dim, dtype=query.dtype, device=query.device)
            b_out = None
        else:  # zeroing a head's columns of the output projection == dropping the head
            w_out = self.out_proj.weight * channel_mask.to(query.dtype)[None, :]
            b_out = self.out_proj.bias
        out, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            w_out,
            b_out,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if per_example:  # out: (L, N, E)
            out = F.linear(
                out * channel_mask.to(out.dtype)[None], self.out_proj.weight, self.out_proj.bias
            )
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights


class PrunedMultiheadAttention(nn.Module):
    """Multi-head attention over a subset of heads, built from plain ``nn.Linear`` layers.

    Same call signature as ``nn.MultiheadAttention``; attention weights are not returned (``None``).
    Supports ``attn_mask`` of shape ``(L, S)`` and ``key_padding_mask`` of shape ``(N, S)``.
    """

    def __init__(
        self,
        embed_dim: int,
        heads: int,
        head_dim: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.k_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.v_proj = nn.Linear(embed_dim, inner, bias=bias)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)
        self.num_heads, self.head_dim = heads, head_dim
        self.batch_first, self.dropout = batch_first, dropout
        # read by nn.TransformerEncoderLayer's fused fast path, which must not take this module
        self.in_proj_bias = None
        self._qkv_same_embed_dim = False

    @classmethod
    @torch.no_grad()
    def from_module(cls, m: nn.MultiheadAttention, keep: torch.Tensor) -> PrunedMultiheadAttention:
        """The heads ``keep`` (indices) of ``m``."""
        if m.bias_k is not None or m.add_zero_attn or not m._qkv_same_embed_dim:
            raise ValueError("attention: bias_k / add_zero_attn / kdim / vdim cannot be pruned")
        e, d = m.embed_dim, m.head_dim
        cols = (keep[:, None] * d + torch.arange(d)[None]).flatten()
        bias = m.in_proj_bias is not None
        new = cls(e, len(keep), d, bias, m.batch_first, m.dropout)
        new = new.to(device=m.in_proj_weight.device, dtype=m.in_proj_weight.dtype)
        for i, proj in enumerate((new.q_proj, new.k_proj, new.v_proj)):
            proj.weight.copy_(m.in_proj_weight[i * e : (i + 1) * e][cols])
            if bias:
                proj.bias.copy_(m.in_proj_bias[i * e : (i + 1) * e][cols])
        new.out_proj.weight.copy_(m.out_proj.weight[:, cols])
        if bias:
            new.out_proj.bias.copy_(m.out_proj.bias)
        return new

    def forward(
        self,
        query,
        key,
        value,
        key_padding_mask=None,
        need_weights=False,
        attn_mask=None,
        average_attn_weights=True,
        is_causal=False,
    ):
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        n, lq, _ = query.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(n, t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(query)), split(self.k_proj(key)), split(self.v_proj(value))
        mask = None
        if attn_mask is not None:
            mask = attn_mask if attn_mask.dtype != torch.bool else ~attn_mask
        if key_padding_mask is not None:
            pad = ~key_padding_mask.bool()[:, None, None, :]
            mask = (
                pad
                if mask is None
                else (
                    mask & pad
                    if mask.dtype == torch.bool
                    else mask.masked_fill(~pad, float("-inf"))
                )
            )
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(n, lq, -1))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, None
