"""Training loop: negative ELBO = cross-entropy + KL / N_train, one loop for every width sampler.

Reliability features (issue 6): periodic and on-SIGINT checkpoints through a ``checkpointer``
callback, exact mid-epoch resume (with :class:`~bnn_nested.training.distributed.EpochSampler`),
RNG states in :meth:`Trainer.state_dict`, a non-finite loss stops training naming the step and the
last good checkpoint, gradient clipping, ``bf16``/``fp16`` autocast (GradScaler for fp16 on CUDA),
and gradient averaging across ranks (:mod:`bnn_nested.training.distributed`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nn.batchnorm import calibrate_bn, nested_norms
from bnn_nested.nn.model import NestedModel
from bnn_nested.regularization.base import Regularizer
from bnn_nested.training.checkpoint import capture_rng_state, restore_rng_state
from bnn_nested.training.distributed import (
    DistContext,
    EpochSampler,
    average_gradients,
    gather_digests,
)
from bnn_nested.training.samplers import WidthSampler, build_sampler, kl_weight_at, temperature_at

#: ``checkpointer(trainer, reason)`` writes a checkpoint and returns its path; reason is one of
#: ``"epoch"``, ``"step"``, ``"interrupt"``, ``"end"``.
Checkpointer = Callable[["Trainer", str], Path]


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or Inf."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT stopped training after a step; ``checkpoint`` is where the state was saved."""

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint


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


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, cfg: Any) -> torch.Tensor:
    """``distill_weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al. 2015), or the
    soft cross-entropy ``- sum softmax(t / T) log softmax(s / T)`` (same gradient, offset by the
    teacher's entropy) with ``distill_loss: soft_ce``; averaged over the batch."""
    t = cfg.distill_temperature
    log_p = F.log_softmax(student / t, -1)
    q = F.softmax(teacher / t, -1)
    per = -(q * log_p).sum(-1)
    if cfg.distill_loss == "kl":
        per = per + (q * F.log_softmax(teacher / t, -1)).sum(-1)
    return cfg.distill_weight * t * t * per.mean()


class Trainer:
    """Trains a :class:`~bnn_nested.nn.NestedModel` by minimising the per-example negative ELBO

    ``sum_passes CE(model_r(x), y) + kl_weight * KL / N_train + penalty``,

    where the passes of a step come from the width sampler (methods.md §1; the KL is the ordering
    KL plus the keep-probability-weighted weight KL).

    Example::

        trainer = Trainer(model, cfg, n_train=len(train_set))
        history = trainer.fit(train_loader, val_loader)
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
        dist: DistContext | None = None,
        checkpointer: Checkpointer | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
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
        self.dist = dist or DistContext(device=self.device)
        self.checkpointer = checkpointer
        self.last_checkpoint: tuple[Path, int] | None = None  # (path, step) of the last save
        self.batch_in_epoch = 0  # batches of the current epoch already trained (mid-epoch resume)
        self._epoch_sums: dict[str, float] = {}
        self._stop_requested = False
        self.precision = getattr(cfg.train, "precision", "fp32")
        if self.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("train.precision: 'fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (``fp32``: none)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # -- one step ----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its parts (``data``, ``kl``, ``penalty``)."""
        model = self.model
        data = x.new_zeros(())
        distill = x.new_zeros(())
        teacher: torch.Tensor | None = None
        original = None
        if self.teacher is not None:
            with torch.no_grad(), self._autocast():
                original = self.teacher(x).float()
        for i, p in enumerate(self.sampler.passes(self.step, self.generator)):
            with model.width(p.width), model.masking(p.mask), self._autocast():
                logits = model(x)
            logits = logits.float()
            if original is not None:
                distill = distill + distillation_loss(logits, original, self.cfg.train)
            if p.distill and teacher is not None:
                data = data + torch.sum(-teacher * F.log_softmax(logits, -1), -1).mean()
            else:
                data = data + F.cross_entropy(logits, y)
            if i == 0:
                teacher = F.softmax(logits, -1).detach()
        kl_w = kl_weight_at(self.cfg.ordering, self.epoch)
        kl = model.kl(keep=self.sampler.kl_keep) * (kl_w / self.n_train)
        penalty = self.regularizer.penalty(model)
        loss = data + kl + penalty + distill
        parts = {"loss": loss, "data": data, "kl": kl, "penalty": penalty}
        if self.teacher is not None:
            parts["distill"] = distill
        return loss, {k: float(torch.as_tensor(v).detach()) for k, v in parts.items()}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss parts.

        Raises:
            NonFiniteLossError: the loss is NaN or Inf (the parameters are left untouched).
        """
        self.model.train()
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        loss, parts = self.loss(x, y)
        finite = math.isfinite(parts["loss"])
        if not finite and not self.dist.active:
            raise NonFiniteLossError(f"loss became {parts['loss']} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        if finite:
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        if self.dist.active:
            flags = torch.tensor([float(self._stop_requested), float(not finite)])
            summed = average_gradients(self.model.parameters(), flags, self.dist.world_size)
            self._stop_requested = bool(summed[0] > 0)
            if summed[1] > 0:
                raise NonFiniteLossError(
                    f"loss became non-finite on {int(summed[1])} rank(s) at step {self.step}"
                )
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.cfg.train.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
        self.regularizer.before_step(self.model, self.optimizer)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.model.project_()
        self.step += 1
        self.regularizer.after_step(self.model, self.step)
        return parts

    # -- epochs ------------------------------------------------------------------------------
    def _batches(self, loader) -> Iterator:
        """The loader's batches for the current epoch, minus those already trained (resume)."""
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, EpochSampler):
            sampler.set_epoch(self.epoch)
            sampler.set_start(self.batch_in_epoch * loader.batch_size)
            if loader.generator is not None:  # worker seeds: a function of (seed, epoch) too
                loader.generator.manual_seed(sampler.seed * 100_003 + self.epoch)
            return iter(loader)
        it = iter(loader)
        for _ in range(self.batch_in_epoch):  # plain loaders: skip (exact only if unshuffled)
            next(it, None)
        return it

    def _non_finite(self, err: NonFiniteLossError) -> NonFiniteLossError:
        where = f"step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1})"
        if self.last_checkpoint is not None:
            path, step = self.last_checkpoint
            last = f"last good checkpoint: {path} (step {step}), kept"
        else:
            last = "no checkpoint was written yet"
        first = str(err).split(" at step")[0]
        return NonFiniteLossError(f"{first} at {where}; training stopped; {last}")

    def train_epoch(self, loader) -> dict[str, float]:
        """Train one epoch (or its remainder after a mid-epoch resume); returns mean loss parts."""
        self.model.set_temperature(temperature_at(self.cfg.ordering, self.epoch))
        batches = self._batches(loader)
        resumable = isinstance(getattr(loader, "sampler", None), EpochSampler)
        total = len(loader) + (self.batch_in_epoch if resumable else 0)
        every_steps = getattr(self.cfg.train, "checkpoint_every_steps", 0)
        for x, y in self._progress(
            batches, total, f"epoch {self.epoch + 1}", initial=self.batch_in_epoch
        ):
            try:
                parts = self.train_step(x, y)
            except NonFiniteLossError as err:
                raise self._non_finite(err) from None
            for k, v in parts.items():
                self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
            self.batch_in_epoch += 1
            if self._stop_requested:
                self._interrupt()
            if every_steps and self.step % every_steps == 0:
                self.save_checkpoint("step")
        n = self.batch_in_epoch
        means = {k: v / max(n, 1) for k, v in self._epoch_sums.items()}
        self._epoch_sums = {}
        self.batch_in_epoch = 0
        if self.scheduler is not None:
            self.scheduler.step()
        self.epoch += 1
        return means

    def _progress(self, it: Iterable, total: int | None, desc: str, initial: int = 0):
        if self.quiet or not self.dist.is_main or not sys.stderr.isatty():
            return it
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False, initial=initial)

    def _check_replicas_agree(self) -> None:
        """All-gather a hash of the parameters; ranks that drifted apart are a bug, not noise."""
        flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in self.model.parameters()])
        digests = gather_digests(flat)
        if len(set(digests)) > 1:
            raise RuntimeError(
                f"model replicas differ across ranks after epoch {self.epoch} (hashes {digests})"
            )

    # -- checkpoints and signals ---------------------------------------------------------------
    def save_checkpoint(self, reason: str) -> Path | None:
        """Write a checkpoint through the ``checkpointer`` callback (if any); remember it."""
        if self.checkpointer is None:
            return None
        path = self.checkpointer(self, reason)
        self.last_checkpoint = (path, self.step)
        return path

    def _interrupt(self) -> None:
        path = self.save_checkpoint("interrupt")
        where = f"step {self.step} (epoch {self.epoch + 1})"
        saved = f"checkpoint saved to {path}" if path is not None else "no checkpoint saved"
        raise TrainingInterrupted(f"interrupted after {where}; {saved}", path)

    @contextlib.contextmanager
    def _sigint_guard(self):
        """While training with a checkpointer, the first SIGINT finishes the current step, saves a
        checkpoint and raises :class:`TrainingInterrupted`; a second one interrupts at once."""
        if self.checkpointer is None or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
            self._stop_requested = False

    @torch.no_grad()
    def accuracy(self, loader, width: float = 1.0) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            with self._autocast():
                pred = self.model(x, width=width).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(total, 1)

    @torch.no_grad()
    def validation_accuracy(self, val_loader, bn_loader=None) -> float:
        """Full-width accuracy; with ``bn_loader``, under batch-norm statistics re-estimated at full
        width on it (the model's norm layers are restored afterwards, so training is unchanged)."""
        norms = nested_norms(self.model)
        if bn_loader is None or not norms:
            return self.accuracy(val_loader)
        saved = [copy.deepcopy(bn.state_dict()) for bn in norms]
        try:
            calibrate_bn(self.model, bn_loader, [1.0], device=self.device)
            return self.accuracy(val_loader)
        finally:
            for bn, state in zip(norms, saved):
                bn.load_state_dict(state)

    def setup(self, example_loader) -> None:
        """Let the regularizer inspect the model on a small batch (once, before training)."""
        if not self._setup_done:
            x0, _ = next(iter(example_loader))
            self.regularizer.setup(self.model, example_input=x0[:2].to(self.device))
            self._setup_done = True

    def fit(
        self,
        train_loader,
        val_loader=None,
        epochs: int | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, float]], None] | None = None,
        bn_loader=None,
    ) -> list[dict[str, float]]:
        """Train until ``epochs`` (default ``cfg.train.epochs``); resumes from ``self.epoch``.

        With a ``checkpointer``, saves every ``train.checkpoint_every`` epochs and every
        ``train.checkpoint_every_steps`` steps, and on SIGINT (then raises
        :class:`TrainingInterrupted`). A NaN/Inf loss raises :class:`NonFiniteLossError` naming the
        step and the last good checkpoint.

        ``val_acc`` in the history is the full-width accuracy of the mean network on ``val_loader``;
        with ``bn_loader`` (training data, unshuffled) batch norm is first re-estimated at full width
        on it, as the final report does, and restored afterwards (without it the running statistics
        of masked training are used, which can be far from what the report will say).
        """
        self.setup(train_loader)
        end = epochs if epochs is not None else self.cfg.train.epochs
        every = getattr(self.cfg.train, "checkpoint_every", 0)
        with self._sigint_guard():
            while self.epoch < end:
                record = {"epoch": self.epoch + 1, **self.train_epoch(train_loader)}
                if val_loader is not None:
                    record["val_acc"] = self.validation_accuracy(val_loader, bn_loader)
                self.history.append(record)
                if not self.quiet and self.dist.is_main:
                    extra = f" val_acc {record['val_acc']:.4f}" if "val_acc" in record else ""
                    print(
                        f"epoch {record['epoch']:3d} loss {record['loss']:.4f} "
                        f"kl {record['kl']:.4f}{extra}",
                        file=sys.stderr,
                    )
                if self.dist.active:
                    self._check_replicas_agree()
                if on_epoch_end is not None:
                    on_epoch_end(self, record)
                if every and self.epoch % every == 0 and self.epoch < end:
                    self.save_checkpoint("epoch")
                if self._stop_requested:
                    self._interrupt()
        return self.history

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: model, optimizer, scheduler, regularizer, the
        sampler generator, the global RNG states, step / epoch / position inside the epoch."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "regularizer": self.regularizer.state_dict(),
            "generator": self.generator.get_state(),
            "rng": capture_rng_state(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_sums": dict(self._epoch_sums),
            "history": self.history,
        }

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        """Inverse of :meth:`state_dict`; ``restore_rng`` also resets the global RNGs."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.regularizer.load_state_dict(state.get("regularizer", {}))
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self._epoch_sums = dict(state.get("epoch_sums", {}))
        self.history = list(state.get("history", []))
        self._setup_done = True
        if restore_rng and "rng" in state:
            restore_rng_state(state["rng"])
