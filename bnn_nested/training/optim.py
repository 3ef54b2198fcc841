"""Optimiser, schedule, mixed precision and the optimisation step of the trainer.

:class:`OptimizerStep` applies one update in the order the norm-control methods rely on:
backward (scaled under fp16) -> unscale -> gradient clipping -> ``regularizer.before_step`` ->
``optimizer.step`` -> ``model.project_()`` (ordering-unit parameters back in range) ->
``regularizer.after_step`` (e.g. WRS rescaling).

Example::

    precision = Precision("bf16", torch.device("cpu"))
    step = OptimizerStep(make_optimizer(model, TrainConfig()), precision)
    with precision.autocast(): loss = objective(x, y, 0, 0, g)[0]
    step.backward(loss); step.apply(model, regularizer, step_count=1)
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from bnn_nested.config import TrainConfig
from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.regularization.base import Regularizer

__all__ = ["OptimizerStep", "Precision", "make_optimizer", "make_scheduler", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' was asked for but CUDA is not available")
    return torch.device(name)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, ordering_lr: float | None = None
) -> torch.optim.Optimizer:
    """Optimizer from a :class:`~bnn_nested.config.TrainConfig` (no built-in weight decay: the
    regularizer owns norm control). Ordering parameters form their own group with ``ordering_lr``,
    and with ``train.log_alpha_lr`` the Gaussian weights' ``log_alpha`` one with that rate."""
    ordering_ids = {
        id(p) for m in model.modules() if isinstance(m, OrderingUnit) for p in m.parameters()
    }
    alpha_ids = (
        {id(p) for n, p in model.named_parameters() if n.endswith("log_alpha")}
        if cfg.log_alpha_lr is not None
        else set()
    )
    trained = [p for p in model.parameters() if p.requires_grad]
    rest = [p for p in trained if id(p) not in ordering_ids and id(p) not in alpha_ids]
    order = [p for p in trained if id(p) in ordering_ids]
    alpha = [p for p in trained if id(p) in alpha_ids]
    params: list[dict[str, Any]] = [{"params": rest, "name": "weights"}]
    if order:
        params.append({"params": order, "lr": ordering_lr or cfg.lr, "name": "ordering"})
    if alpha:
        params.append({"params": alpha, "lr": cfg.log_alpha_lr, "name": "log_alpha"})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"train.optimizer must be one of adam, adamw, sgd; got {cfg.optimizer!r}")


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``train.scheduler``: ``cosine`` anneals over ``train.epochs`` epochs; ``none``: constant."""
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    return None


class Precision:
    """``train.precision`` on a device: the autocast context and, for fp16, the gradient scaler.

    The one place that checks that fp16 runs on CUDA (the config refuses ``fp16`` with
    ``device: cpu`` statically; this catches ``auto`` resolving to the CPU)."""

    def __init__(self, precision: str, device: torch.device) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"train.precision must be one of fp32, bf16, fp16; got {precision!r}")
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("train.precision: 'fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        self.precision = precision
        self.device = device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (``fp32``: none)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)


class OptimizerStep:
    """Backward and update with the precision's scaler, clipping and the regularizer's hooks."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        precision: Precision,
        grad_clip: float | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.precision = precision
        self.grad_clip = grad_clip

    def backward(self, loss: torch.Tensor, zero_grad: bool = True) -> None:
        """Zero the gradients (unless ``zero_grad`` is false: accumulate, e.g. one backward per
        pass of a step), then back-propagate ``loss`` (scaled under fp16)."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def apply(self, model: NestedModel, regularizer: Regularizer, step_count: int) -> None:
        """Update the parameters from their gradients; ``step_count`` is the step just taken."""
        scaler = self.precision.scaler
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        regularizer.before_step(model, self.optimizer)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        model.project_()
        regularizer.after_step(model, step_count)
