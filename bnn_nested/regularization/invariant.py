"""Weight-scale-shift-invariant regularizer (Liu, Cui, Chan; arXiv 2008.02965),
docs/METHODS.md#scale-shift-invariant-regularizer.

A positively homogeneous network (bias-free, ReLU / max-pool / linear) computes the same function
after ``W_l -> a_l W_l`` with ``a_l > 0``, ``prod_l a_l = 1``; the L2 penalty ``sum_l ||W_l||^2``
changes under that shift, so it does not control capacity. Its minimum over all shifts is, by
AM-GM, the invariant "intrinsic norm" used here (``variant="chain"``)::

    R = coefficient * L * (prod_{l=1..L} ||W_l||_F^2)^(1/L)
      = coefficient * L * exp(mean_l log ||W_l||_F^2)          (computed in log space)

For residual networks (``variant="residual"``) each block b (a list of layer names on its residual
branch) contributes a Lipschitz-type factor ``1 + prod_{l in b} ||W_l||_F``::

    R = coefficient * prod_b (1 + prod_{l in b} ||W_l||_F)
      = coefficient * exp(sum_b softplus(sum_{l in b} log ||W_l||_F))

This is invariant to shifts *inside* each block's branch. Layers outside every block (stem,
classifier) do not enter this variant. The paper's exact formula could not be read; both forms
follow docs/METHODS.md#scale-shift-invariant-regularizer. For Bayesian layers ``weight`` is the
posterior mean theta.

Example::

    reg = InvariantRegularizer(1e-4); reg.setup(model)
    loss = nll + reg.penalty(model)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.targets import match_names, weight_layers
from bnn_nested.regularization.wrs import _check_choice

InvariantVariant = Literal["chain", "residual"]


def chain_invariant_norm(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``L * (prod_l ||W_l||_F^2)^(1/L)`` in log space; differentiable. Shape ``()``."""
    if not weights:
        raise ValueError("weights: the chain is empty")
    logs = torch.stack([w.pow(2).sum().log() for w in weights])
    return len(weights) * logs.mean().exp()


def residual_invariant_norm(blocks: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """``prod_b (1 + prod_{l in b} ||W_l||_F)`` in log space; differentiable. Shape ``()``."""
    if not blocks or any(len(b) == 0 for b in blocks):
        raise ValueError("blocks: need at least one block, each with at least one layer")
    per_block = torch.stack([torch.stack([w.norm().log() for w in b]).sum() for b in blocks])
    return F.softplus(per_block).sum().exp()


class InvariantRegularizer(Regularizer):
    """Penalty ``coefficient * R(W)`` with ``R`` the chain or residual invariant norm.

    Args:
        coefficient: penalty weight, >= 0.
        variant: ``"chain"`` or ``"residual"``.
        include: ``fnmatch`` patterns selecting the chain's layers (default: every Linear/Conv
            layer, in module order); ``exclude`` removes layers. Chain variant only.
        blocks: residual variant: a list of blocks, each a list of module names on the block's
            residual branch. Default: ``model.residual_blocks()`` if the model defines it.
    """

    name = "invariant"

    def __init__(
        self,
        coefficient: float = 1e-4,
        variant: InvariantVariant = "chain",
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        blocks: Sequence[Sequence[str]] | None = None,
    ) -> None:
        if coefficient < 0:
            raise ValueError(f"coefficient: must be >= 0, got {coefficient}")
        _check_choice(variant, InvariantVariant, "variant")
        self.coefficient = float(coefficient)
        self.variant = variant
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.blocks = [list(b) for b in blocks] if blocks is not None else None
        self.layers: list[str] = []
        self._modules: dict[str, nn.Module] = {}

    def setup(self, model: nn.Module, example_input: object = None) -> None:
        """Resolve the chain / blocks (``example_input`` is accepted and ignored)."""
        self._modules = weight_layers(model)
        if self.variant == "chain":
            names = match_names(self._modules, self.include, "include") or list(self._modules)
            dropped = set(match_names(self._modules, self.exclude, "exclude"))
            self.layers = [n for n in self._modules if n in names and n not in dropped]
            if not self.layers:
                raise ValueError("include/exclude: no weight layer left for the invariant chain")
            return
        if self.blocks is None:
            hook = getattr(model, "residual_blocks", None)
            if not callable(hook):
                raise ValueError(
                    "blocks: variant 'residual' needs blocks=[[...], ...] or "
                    "model.residual_blocks()"
                )
            self.blocks = [list(b) for b in hook()]
        unknown = [n for b in self.blocks for n in b if n not in self._modules]
        if unknown:
            raise ValueError(f"blocks: {unknown} are not Linear/Conv layers of the model")
        if not self.blocks or any(len(b) == 0 for b in self.blocks):
            raise ValueError("blocks: need at least one block, each with at least one layer")

    def value(self) -> torch.Tensor:
        """The invariant norm ``R(W)`` without the coefficient (differentiable)."""
        if self.variant == "chain":
            return chain_invariant_norm([self._modules[n].weight for n in self.layers])
        assert self.blocks is not None
        return residual_invariant_norm([[self._modules[n].weight for n in b] for b in self.blocks])

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        if self.coefficient == 0:
            return 0.0
        return self.coefficient * self.value()

    def state_dict(self) -> dict:
        return {"layers": list(self.layers), "blocks": self.blocks}
