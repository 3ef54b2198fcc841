"""The one interface every norm-control method implements (see docs/METHODS.md#norm-control).

The trainer calls, on every optimisation step::

    loss = data_term + kl_term + reg.penalty(model)   # differentiable penalty (may be 0)
    loss.backward(); reg.before_step(model, optimizer); optimizer.step()
    reg.after_step(model, step)                        # in-place projection (may do nothing)
"""

from __future__ import annotations

import torch
from torch import nn


class Regularizer:
    """Base class: no penalty, no projection. Subclasses override what they need."""

    name: str = "none"

    def setup(self, model: nn.Module, example_input: torch.Tensor | None = None) -> None:
        """Called once before training (e.g. to record initial norms); ``example_input`` is a
        small batch for tracing which weights a normalisation layer follows."""

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """A differentiable term added to the loss."""
        return 0.0

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``backward()`` and before ``optimizer.step()`` (e.g. to edit gradients)."""

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        """Called right after ``optimizer.step()`` (e.g. to re-project weights)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
