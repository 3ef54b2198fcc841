"""Weight decay as a :class:`Regularizer`: coupled (L2) or decoupled (AdamW-style).

Both are implemented as edits in :meth:`WeightDecay.before_step` (after ``backward()``, before
``optimizer.step()``), never as a loss term, so they match PyTorch's optimizers exactly:

- ``mode="coupled"``: ``g <- g + wd * w``, the L2 gradient, identical to
  ``torch.optim.SGD(weight_decay=wd)`` (and to the ``weight_decay`` of Adam, RMSprop, ...).
- ``mode="decoupled"``: ``w <- w * (1 - lr * wd)`` with the learning rate of the parameter's
  optimizer group *at this step*, applied before the optimizer's own update, identical to
  ``torch.optim.AdamW(weight_decay=wd)`` when used with ``Adam(weight_decay=0)``
  (Loshchilov & Hutter, ICLR 2019, Algorithm 2).

Parameters with no gradient this step are skipped, as PyTorch's optimizers do. ``log_alpha`` and
ordering parameters are never decayed (see :func:`~bnn_nested.regularization.targets.decay_parameters`).

Example::

    reg = WeightDecay(5e-4, mode="decoupled"); reg.setup(model)
    loss.backward(); reg.before_step(model, opt); opt.step()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, get_args

import torch
from torch import nn

from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.targets import decay_parameters

WeightDecayMode = Literal["coupled", "decoupled"]


@torch.no_grad()
def add_coupled_decay_(params: Iterable[torch.Tensor], coefficient: float) -> None:
    """In place ``p.grad += coefficient * p`` for every parameter that has a gradient."""
    if coefficient == 0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.add_(p, alpha=coefficient)


@torch.no_grad()
def apply_decoupled_decay_(
    params: Iterable[torch.Tensor], coefficient: float, optimizer: torch.optim.Optimizer
) -> None:
    """In place ``p *= 1 - lr * coefficient`` using each parameter's group learning rate.

    Raises:
        ValueError: a parameter is not managed by ``optimizer``.
    """
    if coefficient == 0:
        return
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for p in params:
        if p.grad is None:
            continue
        if id(p) not in lr_of:
            raise ValueError("optimizer: a decayed parameter is not in any optimizer param group")
        p.mul_(1 - lr_of[id(p)] * coefficient)


class WeightDecay(Regularizer):
    """Coupled or decoupled weight decay (see module docstring).

    Args:
        coefficient: decay strength ``wd >= 0``.
        mode: ``"coupled"`` (L2 gradient) or ``"decoupled"`` (AdamW).
        exclude_bias_and_norm: skip biases and normalization affine parameters (default True).
        exclude: ``fnmatch`` patterns of module names whose parameters are not decayed.
    """

    name = "weight_decay"

    def __init__(
        self,
        coefficient: float = 5e-4,
        mode: WeightDecayMode = "coupled",
        exclude_bias_and_norm: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        if coefficient < 0:
            raise ValueError(f"coefficient: must be >= 0, got {coefficient}")
        if mode not in get_args(WeightDecayMode):
            raise ValueError(f"mode: got {mode!r}; accepted 'coupled', 'decoupled'")
        self.coefficient = float(coefficient)
        self.mode = mode
        self.exclude_bias_and_norm = exclude_bias_and_norm
        self.exclude = tuple(exclude)
        self.params: dict[str, nn.Parameter] = {}

    def setup(self, model: nn.Module, example_input: object = None) -> None:
        """Collect the decayed parameters (``example_input`` is accepted and ignored)."""
        self.params = decay_parameters(model, self.exclude_bias_and_norm, self.exclude)

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.mode == "coupled":
            add_coupled_decay_(self.params.values(), self.coefficient)
        else:
            apply_decoupled_decay_(self.params.values(), self.coefficient, optimizer)

    def state_dict(self) -> dict:
        return {"decayed": list(self.params)}
