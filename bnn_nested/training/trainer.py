"""Training loop: negative ELBO = cross-entropy + KL / N_train, one loop for every width sampler."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nn.model import NestedModel
from bnn_nested.regularization.base import Regularizer
from bnn_nested.training.samplers import WidthSampler, build_sampler, kl_weight_at, temperature_at


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or Inf."""


def make_optimizer(
    model: nn.Module, cfg: Any, ordering_lr: float | None = None
) -> torch.optim.Optimizer:
    """Optimizer from a :class:`~bnn_nested.config.TrainConfig` (no built-in weight decay: the
    regularizer owns norm control). Ordering parameters form their own group with ``ordering_lr``."""
    from bnn_nested.nn.ordering_unit import OrderingUnit

    ordering_ids = {
        id(p) for m in model.modules() if isinstance(m, OrderingUnit) for p in m.parameters()
    }
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ordering_ids]
    order = [p for p in model.parameters() if p.requires_grad and id(p) in ordering_ids]
    params: list[dict[str, Any]] = [{"params": rest, "name": "weights"}]
    if order:
        params.append({"params": order, "lr": ordering_lr or cfg.lr, "name": "ordering"})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"train.optimizer must be one of adam, adamw, sgd; got {cfg.optimizer!r}")


def resolve_device(name: str) -> torch.device:
    """``cpu`` | ``cuda`` | ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' was asked for but CUDA is not available")
    return torch.device(name)


class Trainer:
    """Trains a :class:`~bnn_nested.nn.NestedModel` by minimising the per-example negative ELBO

    ``sum_passes CE(model_r(x), y) + kl_weight * KL / N_train + penalty``,

    where the passes of a step come from the width sampler (methods.md §1; the KL is the ordering
    KL plus the keep-probability-weighted weight KL).

    Example:
        >>> trainer = Trainer(model, cfg, n_train=len(train_set))
        >>> history = trainer.fit(train_loader, val_loader)
    """

    def __init__(
        self,
        model: NestedModel,
        cfg: Any,
        n_train: int,
        regularizer: Regularizer | None = None,
        sampler: WidthSampler | None = None,
        device: torch.device | str = "cpu",
        quiet: bool = False,
    ) -> None:
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.n_train = n_train
        self.sampler = sampler or build_sampler(cfg.ordering)
        self.regularizer = regularizer or Regularizer()
        self.optimizer = make_optimizer(model, cfg.train, cfg.ordering.lr)
        self.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=cfg.train.epochs)
            if cfg.train.scheduler == "cosine"
            else None
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.quiet = quiet
        self._setup_done = False

    # -- one step ----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its parts (``data``, ``kl``, ``penalty``)."""
        model = self.model
        data = x.new_zeros(())
        teacher: torch.Tensor | None = None
        for i, p in enumerate(self.sampler.passes(self.step, self.generator)):
            with model.width(p.width), model.masking(p.mask):
                logits = model(x)
            if p.distill and teacher is not None:
                data = data + torch.sum(-teacher * F.log_softmax(logits, -1), -1).mean()
            else:
                data = data + F.cross_entropy(logits, y)
            if i == 0:
                teacher = F.softmax(logits, -1).detach()
        kl_w = kl_weight_at(self.cfg.ordering, self.epoch)
        kl = model.kl() * (kl_w / self.n_train)
        penalty = self.regularizer.penalty(model)
        loss = data + kl + penalty
        parts = {"loss": loss, "data": data, "kl": kl, "penalty": penalty}
        return loss, {k: float(torch.as_tensor(v).detach()) for k, v in parts.items()}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        self.model.train()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        loss, parts = self.loss(x, y)
        if not math.isfinite(parts["loss"]):
            raise NonFiniteLossError(f"loss became {parts['loss']} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.regularizer.before_step(self.model, self.optimizer)
        self.optimizer.step()
        self.step += 1
        self.regularizer.after_step(self.model, self.step)
        return parts

    # -- epochs ------------------------------------------------------------------------------
    def _progress(self, it: Iterable, total: int | None, desc: str):
        if self.quiet or not sys.stderr.isatty():
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False)

    def train_epoch(self, loader) -> dict[str, float]:
        self.model.set_temperature(temperature_at(self.cfg.ordering, self.epoch))
        sums: dict[str, float] = {}
        n = 0
        for x, y in self._progress(loader, len(loader), f"epoch {self.epoch + 1}"):
            parts = self.train_step(x, y)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def accuracy(self, loader, width: float = 1.0) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            pred = self.model(x.to(self.device), width=width).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(total, 1)

    def fit(
        self,
        train_loader,
        val_loader=None,
        epochs: int | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, float]], None] | None = None,
    ) -> list[dict[str, float]]:
        if not self._setup_done:
            x0, _ = next(iter(train_loader))
            self.regularizer.setup(self.model, example_input=x0[:2].to(self.device))
            self._setup_done = True
        end = epochs if epochs is not None else self.cfg.train.epochs
        while self.epoch < end:
            record = {"epoch": self.epoch + 1, **self.train_epoch(train_loader)}
            if val_loader is not None:
                record["val_acc"] = self.accuracy(val_loader)
            self.history.append(record)
            if not self.quiet:
                extra = f" val_acc {record['val_acc']:.4f}" if "val_acc" in record else ""
                print(f"epoch {record['epoch']:3d} loss {record['loss']:.4f} kl {record['kl']:.4f}{extra}",
                      file=sys.stderr)
            if on_epoch_end is not None:
                on_epoch_end(self, record)
        return self.history

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "regularizer": self.regularizer.state_dict(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "epoch": self.epoch,
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.regularizer.load_state_dict(state.get("regularizer", {}))
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.history = list(state.get("history", []))
        self._setup_done = True
