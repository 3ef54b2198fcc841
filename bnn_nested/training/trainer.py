"""The training loop: one loop for every width sampler, minimising each sampler's negative ELBO.

The trainer composes small parts, each its own module:

* the objective (:class:`~bnn_nested.training.objective.NegativeELBO`);
* the optimisation step, optimiser, schedule and mixed precision (:mod:`bnn_nested.training.optim`);
* data parallelism across processes (``DistributedDataParallel``), the stop/NaN flags and the
  replica check (:mod:`bnn_nested.training.distributed`);
* when to checkpoint and how SIGINT stops after a step (:mod:`bnn_nested.training.policy`);
* RNG states for exact resume (:mod:`bnn_nested.training.checkpoint`).

It takes typed settings (:class:`~bnn_nested.config.TrainConfig`, :class:`~bnn_nested.config.
OrderingConfig`), so it runs without a YAML file and on plain ``DataLoader`` objects.

Example::

    trainer = Trainer(model, TrainConfig(epochs=5), OrderingConfig(sampler="vou"))
    history = trainer.fit(train_loader, val_loader)   # N = len(train_loader.dataset)
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bnn_nested.config import Config, OrderingConfig, TrainConfig
from bnn_nested.nn.batchnorm import nested_norms, recalibrate_bn
from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.nn.utils import Inputs, call_model, map_inputs, move_inputs
from bnn_nested.progress import epoch_line, progress
from bnn_nested.regularization.base import Regularizer
from bnn_nested.training.checkpoint import capture_rng_state, restore_rng_state
from bnn_nested.training.coordinate import (
    MIN_KL_WEIGHT,
    coordinate_units,
    loss_curves,
    newton_variances,
    update,
)
from bnn_nested.training.distributed import (
    DistContext,
    EpochSampler,
    StepFlags,
    check_replicas_agree,
    data_parallel,
    unused_parameters,
)
from bnn_nested.training.objective import NegativeELBO, PassLoss
from bnn_nested.training.optim import (
    OptimizerStep,
    Precision,
    make_optimizer,
    make_scheduler,
)
from bnn_nested.training.policy import CheckpointPolicy, SigintStop
from bnn_nested.training.samplers import (
    WidthSampler,
    build_sampler,
    kl_weight_at,
    temperature_at,
)

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


def _detached(terms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).detach() for k, v in terms.items()}


def _dataset_size(loader) -> int:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        raise ValueError(
            "n_train: give the training-set size (the loader has no sized .dataset)"
        ) from None


def posterior_summary(model: nn.Module) -> dict[str, dict[str, float]]:
    """Where both posteriors stand now: ``expected_groups`` of every learned ordering unit
    (``F + sum_k P(b >= k)``) and ``mean_log_alpha`` of every Gaussian-weight parameter, by name."""
    with torch.no_grad():
        groups = {
            name: u.expected_groups()
            for name, u in model.named_modules()
            if isinstance(u, OrderingUnit) and u.learn
        }
        alphas = {
            name[: -len(".log_alpha")]: float(p.mean())
            for name, p in model.named_parameters()
            if name.endswith("log_alpha")
        }
    return {"expected_groups": groups, "mean_log_alpha": alphas}


class Trainer:
    """Trains a :class:`~bnn_nested.nn.NestedModel` by minimising the per-example negative ELBO

    ``sum_passes CE(model_r(x), y) + kl_weight * KL / N_train + penalty``

    (:class:`~bnn_nested.training.objective.NegativeELBO`; docs/METHODS.md#the-objective-each-width-samplers-own-negative-elbo).

    Args:
        model: the nested model (moved to ``device``).
        train: optimiser, schedule, precision, clipping, checkpoint and distillation settings; a
            whole :class:`~bnn_nested.config.Config` is accepted too (its ``train``, ``ordering``
            and ``seed`` are used).
        ordering: the width sampler's settings (default: ``OrderingConfig()``, i.e. VOU).
        n_train: training-set size ``N``; default ``len(train_loader.dataset)`` at :meth:`fit`.
        seed: seed of the sampler's generator (sandwich widths).
        regularizer: norm control (default none); sampler: overrides ``ordering``'s.
        device, quiet, dist, checkpointer, teacher: where to train, progress output, the process
            group, the checkpoint callback, a frozen network to distil from.

    Example::

        trainer = Trainer(model, cfg, n_train=len(train_set))
        history = trainer.fit(train_loader, val_loader)
    """

    def __init__(
        self,
        model: NestedModel,
        train: TrainConfig | Config | None = None,
        ordering: OrderingConfig | None = None,
        *,
        n_train: int | None = None,
        seed: int = 0,
        regularizer: Regularizer | None = None,
        sampler: WidthSampler | None = None,
        device: torch.device | str = "cpu",
        quiet: bool = False,
        dist: DistContext | None = None,
        checkpointer: Checkpointer | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        if isinstance(train, Config):
            train, ordering, seed = train.train, ordering or train.ordering, train.seed
        if ordering is not None and not isinstance(ordering, OrderingConfig):
            raise TypeError(
                f"ordering: expected an OrderingConfig, got {type(ordering).__name__} "
                "(pass n_train= by keyword)"
            )
        self.train_cfg: TrainConfig = train or TrainConfig()
        self.ordering_cfg: OrderingConfig = ordering or OrderingConfig()
        if n_train is not None and n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.sampler = sampler or build_sampler(self.ordering_cfg)
        self.regularizer = regularizer or Regularizer()
        self.precision = Precision(self.train_cfg.precision, self.device)
        self.optimizer = make_optimizer(model, self.train_cfg, self.ordering_cfg.lr)
        self.scheduler = make_scheduler(self.optimizer, self.train_cfg)
        self.stepper = OptimizerStep(self.optimizer, self.precision, self.train_cfg.grad_clip)
        self.policy = CheckpointPolicy(
            self.train_cfg.checkpoint_every, self.train_cfg.checkpoint_every_steps
        )
        self.objective: NegativeELBO | None = None
        if n_train is not None:
            self.objective = self._objective(n_train)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.step = 0
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        #: per epoch: each learned ordering unit's expected groups and each Gaussian layer's mean
        #: log_alpha (:func:`posterior_summary`), so a report can show convergence, not drift
        self.posterior_history: list[dict[str, dict[str, float]]] = []
        self.quiet = quiet
        self._setup_done = False
        self.dist = dist or DistContext(device=self.device)
        if self.dist.active and self.ordering_cfg.gradient == "coordinate":
            raise ValueError(
                "ordering.gradient: 'coordinate' runs in one process (its per-truncation loss "
                "estimates are not shared across ranks); use 'straight_through' or 'score' "
                "under torchrun"
            )
        self._ddp: DistributedDataParallel | None = None  # built by _forward on first use
        self.checkpointer = checkpointer
        self.last_checkpoint: tuple[Path, int] | None = None  # (path, step) of the last save
        self.batch_in_epoch = 0  # batches of the current epoch already trained (mid-epoch resume)
        self._epoch_sums: dict[str, float] = {}
        self.stop = SigintStop(enabled=checkpointer is not None)
        #: across processes: the stop the ranks agreed on at the last step (the sum of their
        #: requests); a rank stops on this, never on its own request alone
        self._stop_agreed = False

    def _objective(self, n_train: int) -> NegativeELBO:
        return NegativeELBO(
            self.model,
            self.sampler,
            n_train,
            self.ordering_cfg,
            self.regularizer,
            self.teacher,
            self.train_cfg,
            self.precision.autocast,
        )

    @property
    def n_train(self) -> int | None:
        return self.objective.n_train if self.objective is not None else None

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.precision.scaler

    @property
    def _stop_requested(self) -> bool:
        return self.stop.requested

    @_stop_requested.setter
    def _stop_requested(self, value: bool) -> None:
        self.stop.requested = value

    # -- one step ----------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its parts (``loss``, ``data``, ``kl``, ``penalty``)."""
        if self.objective is None:
            raise ValueError("n_train: unknown before fit(); pass n_train= to Trainer")
        return self.objective(x, y, self.step, self.epoch, self.generator)

    def _forward(self, x, y, plan, original) -> Callable[..., dict[str, torch.Tensor]]:
        """One pass of the objective: ``DistributedDataParallel(PassLoss)`` across processes (built
        on first use, after a resume has loaded the state), the objective itself in one process.

        DDP looks for parameters left out of a step's graph only when the first step's
        synchronised (last) pass, probed once on this step's batch with every RNG and buffer put
        back, leaves some out (:func:`~bnn_nested.training.distributed.unused_parameters`; the
        ranks agree by an all-reduce): the built-in models use every parameter in every step, and
        DDP warns on every rank when asked to look and nothing is unused."""
        objective = self.objective
        assert objective is not None
        if not self.dist.active:
            return objective.pass_terms
        if self._ddp is None or self._ddp.module.objective[0] is not objective:
            scored = list(objective._scored)

            def last_pass() -> torch.Tensor:
                return objective.pass_terms(x, y, plan[-1], None, original, self.epoch)["loss"]

            try:
                unused = unused_parameters(self.model, last_pass)
            finally:
                objective._scored = scored
            anywhere = StepFlags(bool(unused), False, self.dist).wait()[0] > 0
            self._ddp = data_parallel(PassLoss(objective), self.dist, anywhere)
        return self._ddp

    def train_step(self, x: Inputs, y: torch.Tensor) -> dict[str, float]:
        """One optimisation step on a batch; returns the loss parts. ``x``: a tensor, a tuple of
        positional inputs or a dict of keyword inputs (a tokenizer's batch), as the model takes.

        Each pass of the sampler's plan runs its forward and backward on its own (the gradients
        accumulate); across processes all passes but the last run inside DDP's ``no_sync()``, and
        the last one's backward averages the accumulated gradients over ranks.

        Raises:
            NonFiniteLossError: the loss is NaN or Inf (the parameters are left untouched).
        """
        if self.objective is None:
            raise ValueError("n_train: unknown before fit(); pass n_train= to Trainer")
        self.model.train()
        x = move_inputs(x, self.device)
        y = y.to(self.device, non_blocking=True)
        objective = self.objective
        original = objective.teacher_logits(x)
        plan = objective.plan(self.step, self.generator)
        forward = self._forward(x, y, plan, original)
        self.optimizer.zero_grad(set_to_none=True)
        terms: list[dict[str, torch.Tensor]] = []
        flags: StepFlags | None = None
        for i, p in enumerate(plan):
            last = i == len(plan) - 1
            target = terms[0]["probs"] if terms else None
            sync = self._ddp.no_sync() if self._ddp is not None and not last else nullcontext()
            with sync:
                t = forward(x, y, p, target, original, self.epoch if last else None)
                if last:
                    parts = {
                        k: float(v) for k, v in objective.summarize(terms + [_detached(t)]).items()
                    }
                    finite = math.isfinite(parts["loss"])
                    if not self.dist.active and not finite:
                        raise NonFiniteLossError(f"loss became {parts['loss']} at step {self.step}")
                    if self.dist.active:
                        flags = StepFlags(self._stop_requested, not finite, self.dist)
                self.stepper.backward(t["loss"], zero_grad=False)
            terms.append(_detached(t))
        if flags is not None:
            stop, bad = flags.wait()
            # only ever raise the local request: a SIGINT that arrived while the flags were in
            # flight (during the backward pass) is not in this sum and is sent with the next step
            self._stop_agreed = stop > 0
            if self._stop_agreed:
                self._stop_requested = True
            if bad:
                raise NonFiniteLossError(
                    f"loss became non-finite on {bad} rank(s) at step {self.step}"
                )
        if self.train_cfg.log_alpha_update == "newton":
            kl_weight = max(kl_weight_at(self.ordering_cfg, self.epoch), MIN_KL_WEIGHT)
            newton_variances(self.model, kl_weight / objective.n_train, self.newton_rate())
        self.step += 1
        self.stepper.apply(self.model, self.regularizer, self.step)
        return parts

    def newton_rate(self) -> float:
        """``train.newton_rate`` times the schedule's factor (current over initial learning rate of
        the first parameter group): under ``train.scheduler: cosine`` the damping of the variances'
        fixed-point update decays with the means' steps, so their noise around the fixed point
        (a one-batch curvature estimate per step) dies out as the means settle (Robbins-Monro)."""
        rate = self.train_cfg.newton_rate
        if self.scheduler is None:
            return rate
        group = self.optimizer.param_groups[0]
        return rate * group["lr"] / group.get("initial_lr", group["lr"])

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
        self.model.set_temperature(temperature_at(self.ordering_cfg, self.epoch))
        batches = self._batches(loader)
        resumable = isinstance(getattr(loader, "sampler", None), EpochSampler)
        total = len(loader) + (self.batch_in_epoch if resumable else 0)
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
            if self._stop_requested if not self.dist.active else self._stop_agreed:
                self._interrupt()
            if self.policy.after_step(self.step):
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

        enabled = not self.quiet and self.dist.is_main
        return progress(it, total, desc, enabled=enabled, initial=initial)

    # -- checkpoints and signals ---------------------------------------------------------------
    def save_checkpoint(self, reason: str) -> Path | None:
        """Write a checkpoint through the ``checkpointer`` callback (if any); remember it."""
        if self.checkpointer is None:
            return None
        path = self.checkpointer(self, reason)
        self.last_checkpoint = (path, self.step)
        return path

    def _stop_at_epoch_end(self) -> bool:
        """Stop after this epoch? Across processes every rank must answer the same: a SIGINT
        reaches the ranks at slightly different moments (one may be validating, another already
        past its check), so the ranks' local requests are summed by one small all-reduce."""
        if not self.dist.active:
            return self._stop_requested
        self._stop_agreed = StepFlags(self._stop_requested, False, self.dist).wait()[0] > 0
        if self._stop_agreed:
            self._stop_requested = True
        return self._stop_agreed

    def _interrupt(self) -> None:
        path = self.save_checkpoint("interrupt")
        # mid-epoch: the epoch under way; at an epoch's end: the epoch just finished (not the next)
        epoch = self.epoch + 1 if self.batch_in_epoch else self.epoch
        where = f"step {self.step} (epoch {epoch} of {self.train_cfg.epochs})"
        saved = f"checkpoint saved to {path}" if path is not None else "no checkpoint saved"
        raise TrainingInterrupted(f"interrupted after {where}; {saved}", path)

    @torch.no_grad()
    def accuracy(self, loader, width: float = 1.0) -> float:
        self.model.eval()
        correct = total = 0
        for x, y in loader:
            x = move_inputs(x, self.device)
            with self.precision.autocast():
                pred = call_model(self.model, x, width=width).argmax(-1).cpu()
            correct += int((pred == y).sum())
            total += len(y)
        return correct / max(total, 1)

    @torch.no_grad()
    def validation_accuracy(self, val_loader, bn_loader=None, width: float = 1.0) -> float:
        """Accuracy at ``width`` (default full); with ``bn_loader``, under batch-norm statistics
        re-estimated at that width on it (the model's norm layers are restored afterwards, so
        training is unchanged)."""
        norms = nested_norms(self.model)
        if bn_loader is None or not norms:
            return self.accuracy(val_loader, width)
        saved = [copy.deepcopy(bn.state_dict()) for bn in norms]
        try:
            recalibrate_bn(self.model, bn_loader, [width], device=self.device)
            return self.accuracy(val_loader, width)
        finally:
            for bn, state in zip(norms, saved):
                bn.load_state_dict(state)

    def setup(self, example_loader) -> None:
        """Let the regularizer inspect the model on a small batch (once, before training)."""
        if not self._setup_done:
            x0, _ = next(iter(example_loader))
            x0 = move_inputs(map_inputs(x0, lambda t: t[:2]), self.device)
            self.regularizer.setup(self.model, example_input=x0)
            self._setup_done = True

    def fit(
        self,
        train_loader,
        val_loader=None,
        epochs: int | None = None,
        on_epoch_end: Callable[[Trainer, dict[str, float]], None] | None = None,
        bn_loader=None,
    ) -> list[dict[str, float]]:
        """Train until ``epochs`` (default ``train.epochs``); resumes from ``self.epoch``.

        Plain ``DataLoader`` objects work; with an :class:`~bnn_nested.training.distributed.
        EpochSampler` a mid-epoch resume is exact (a plain shuffled loader resumes approximately).

        With a ``checkpointer``, saves every ``train.checkpoint_every`` epochs and every
        ``train.checkpoint_every_steps`` steps, and on SIGINT (then raises
        :class:`TrainingInterrupted`). A NaN/Inf loss raises :class:`NonFiniteLossError` naming the
        step and the last good checkpoint.

        ``val_acc`` in the history is the full-width accuracy of the mean network on ``val_loader``;
        with ``bn_loader`` (training data, unshuffled) batch norm is first re-estimated at full width
        on it, as the final report does, and restored afterwards (without it the running statistics
        of masked training are used, which can be far from what the report will say).
        """
        if self.objective is None:
            self.objective = self._objective(_dataset_size(train_loader))
        self.setup(train_loader)
        end = epochs if epochs is not None else self.train_cfg.epochs
        try:
            self._fit_epochs(train_loader, val_loader, end, on_epoch_end, bn_loader)
        finally:
            self.release_process_group()
        return self.history

    def update_ordering(self, train_loader) -> None:
        """``ordering.gradient: coordinate``: measure every unit's data term at each truncation on
        ``ordering.coordinate_examples`` training examples (a random subset fixed by the seed) and
        set ``q(b)`` to its optimum (:mod:`bnn_nested.training.coordinate`); nothing otherwise."""
        if not coordinate_units(self.model):
            return
        dataset = train_loader.dataset
        n = min(self.ordering_cfg.coordinate_examples, len(dataset))
        # a fixed random subset (data sets are often sorted by class), the same every epoch
        index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
        subset = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, index[:n].tolist()),
            batch_size=train_loader.batch_size or 256,
            collate_fn=train_loader.collate_fn,
        )
        batches = [(move_inputs(x, self.device), y.to(self.device)) for x, y in subset]
        loss_curves(self.model, batches, seed=self.seed)
        assert self.objective is not None
        update(self.model, self.objective.n_train, kl_weight_at(self.ordering_cfg, self.epoch - 1))

    def release_process_group(self) -> None:
        """Drop the ``DistributedDataParallel`` wrapper, the trainer's only reference to the
        process group (a later step builds a new one). ``fit`` calls it on the way out, so that
        ``destroy_process_group`` can free the group and join gloo's C++ threads while the
        interpreter is fully alive: a group kept alive by a wrapper is torn down during
        interpreter shutdown instead, where its threads can abort the process
        (``terminate called without an active exception``; docs/multiprocess.md)."""
        self._ddp = None

    def _fit_epochs(self, train_loader, val_loader, end, on_epoch_end, bn_loader) -> None:
        self._stop_agreed = False
        with self.stop:
            while self.epoch < end:
                record = {"epoch": self.epoch + 1, **self.train_epoch(train_loader)}
                self.update_ordering(train_loader)
                if val_loader is not None:
                    record["val_acc"] = self.validation_accuracy(val_loader, bn_loader)
                self.history.append(record)
                self.posterior_history.append(posterior_summary(self.model))
                if not self.quiet and self.dist.is_main:
                    print(epoch_line(record), file=sys.stderr)
                if self.dist.active:
                    check_replicas_agree(self.model, self.epoch)
                if on_epoch_end is not None:
                    on_epoch_end(self, record)
                if self.policy.after_epoch(self.epoch, end):
                    self.save_checkpoint("epoch")
                if self._stop_at_epoch_end():
                    self._interrupt()

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
            "posterior_history": self.posterior_history,
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
        self.posterior_history = list(state.get("posterior_history", []))
        self._setup_done = True
        if restore_rng and "rng" in state:
            restore_rng_state(state["rng"])
