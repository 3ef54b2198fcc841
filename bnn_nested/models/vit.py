"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) as a *plain* definition, nested by
:func:`~bnn_nested.nest.nestify`: attention heads ordered in groups of whole heads, MLP hidden units
ordered, the embedding / residual width (LayerNorm) left whole.

Config: ``model: {name: vit, hidden: [dim, mlp_dim], kwargs: {patch: 7, depth: 4, heads: 4}}``.
"""

from __future__ import annotations

import torch
from torch import nn

from bnn_nested.models.external import image_shape, nest_plain
from bnn_nested.models.registry import register_model


class ViT(nn.Module):
    """Patch embedding (a strided conv), class token, learned positions, pre-norm encoder layers
    (``nn.TransformerEncoderLayer``), LayerNorm and a linear head on the class token.

    Example:
        >>> net = ViT((1, 28, 28), 10, patch=7, dim=64, depth=4, heads=4, mlp_dim=128)
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        image: tuple[int, int, int],
        num_classes: int,
        patch: int = 7,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c, h, w = image
        if h % patch or w % patch:
            raise ValueError(f"model.kwargs.patch: {patch} must divide the image size {h}x{w}")
        if dim % heads:
            raise ValueError(f"model.kwargs.heads: {heads} must divide the width {dim}")
        self.image = image
        self.embed = nn.Conv2d(c, dim, patch, patch)
        n = (h // patch) * (w // patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.image)
        h = self.embed(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), h], 1) + self.pos
        return self.head(self.norm(self.encoder(h)[:, 0]))


@register_model("vit", options=("kwargs",))
def _build_vit(cfg, ordering, input_shape, num_classes):
    if len(cfg.hidden) != 2:
        raise ValueError(
            f"model.hidden: vit takes [dim, mlp_dim], e.g. [64, 128]; got {list(cfg.hidden)}"
        )
    allowed = {"patch", "depth", "heads", "dropout"}
    unknown = set(cfg.kwargs) - allowed
    if unknown:
        raise ValueError(
            f"model.kwargs: unknown key(s) {sorted(unknown)} for vit; accepted: {sorted(allowed)}"
        )
    shape = image_shape(input_shape)
    net = ViT(shape, num_classes, dim=cfg.hidden[0], mlp_dim=cfg.hidden[1], **cfg.kwargs)
    return nest_plain(cfg, ordering, net, shape)
