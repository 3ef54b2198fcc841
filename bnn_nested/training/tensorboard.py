"""TensorBoard logging of a training run (``train.log: tensorboard``), under ``RUN/tensorboard/``.

One :class:`TensorBoardLogger` is the trainer's ``on_epoch_end`` callback; after every epoch it
writes (step = the epoch number, counted from 1):

============================  =================================================================
tag                           value
============================  =================================================================
``train/loss``                mean negative ELBO per example of the epoch's steps
``train/data_nll``            its data term (cross-entropy summed over the sampler's passes)
``train/kl_over_n``           ``kl_weight * KL / N``
``train/penalty``             the norm-control penalty
``train/distill``             the distillation term (only with ``train.teacher``)
``ordering/temperature``      the Downhill temperature the epoch trained at
``opt/lr/<group>``            the learning rate of each parameter group during the epoch
``val/acc``                   full-width validation accuracy (the history's ``val_acc``)
``val/acc/w<width>``          validation accuracy at each ``eval.widths`` width, with batch norm
                              re-estimated at that width (as the final report does)
``keep_probs/<unit>``         histogram of each ordering unit's keep probabilities ``P(b >= k)``
``keep_probs``                image: one row per ordering unit, one column per group (white = 1)
============================  =================================================================

The per-epoch line on stderr stays. ``tensorboard`` is an optional dependency
(``pip install 'bnn-nested[tensorboard]'``); :func:`require_tensorboard` names it when missing.

Example::

    logger = TensorBoardLogger("runs/a/tensorboard", trainer, widths=[0.25, 1.0], val_loader=val)
    trainer.fit(train_loader, val_loader, on_epoch_end=logger); logger.close()
    # then, in a shell: tensorboard --logdir runs/a/tensorboard
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from bnn_nested.training.samplers import temperature_at

__all__ = ["LOG_DIR", "TensorBoardLogger", "require_tensorboard"]

#: Sub-directory of the run directory that holds the event files.
LOG_DIR = "tensorboard"

#: The scalar tags written every epoch from the history record: (record key, tag).
TRAIN_TAGS = (
    ("loss", "train/loss"),
    ("data", "train/data_nll"),
    ("kl", "train/kl_over_n"),
    ("penalty", "train/penalty"),
    ("distill", "train/distill"),
)


def require_tensorboard() -> None:
    """Raise a one-line ``ValueError`` when the ``tensorboard`` package is not installed."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "train.log: 'tensorboard' needs the tensorboard package; install it with "
            "pip install 'bnn-nested[tensorboard]', or set train.log: none"
        )


def keep_probs_image(keep: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(1, units, max_groups)`` grey image in ``[0, 1]`` of the keep probabilities (missing
    groups of narrower units are 0)."""
    rows = [k.detach().float().reshape(-1).cpu() for k in keep.values()]
    width = max(len(r) for r in rows)
    img = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        img[i, : len(r)] = r.clamp(0.0, 1.0)
    return img.unsqueeze(0)


class TensorBoardLogger:
    """``on_epoch_end`` callback writing the tags in the module docstring to ``log_dir``.

    Args:
        log_dir: where the event files go (created).
        trainer: the trainer being logged; build the logger after a resume has loaded its state
            (the learning rate read now is the one of the next epoch).
        widths: the widths whose validation accuracy is logged (``eval.widths``).
        val_loader: validation data (``None``: no ``val/acc/w*`` tags).
        bn_loader: training data, unshuffled, to re-estimate batch norm at each width on.
    """

    def __init__(
        self,
        log_dir: str | Path,
        trainer: Any,
        widths: list[float] | None = None,
        val_loader=None,
        bn_loader=None,
    ) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # deferred: optional dependency

        # purge_step: a resumed run rewrites the epochs after its checkpoint; TensorBoard drops the
        # events an interrupted process had written for them
        self.writer = SummaryWriter(str(log_dir), purge_step=trainer.epoch + 1)
        self.widths = sorted(widths or [])
        self.val_loader = val_loader
        self.bn_loader = bn_loader
        self._lrs = self._current_lrs(trainer)

    @staticmethod
    def _current_lrs(trainer) -> dict[str, float]:
        return {
            str(g.get("name", i)): float(g["lr"])
            for i, g in enumerate(trainer.optimizer.param_groups)
        }

    def __call__(self, trainer, record: dict[str, float]) -> None:
        step = int(record["epoch"])
        w = self.writer
        for key, tag in TRAIN_TAGS:
            if key in record:
                w.add_scalar(tag, record[key], step)
        w.add_scalar("ordering/temperature", temperature_at(trainer.ordering_cfg, step - 1), step)
        for name, lr in self._lrs.items():
            w.add_scalar(f"opt/lr/{name}", lr, step)
        self._lrs = self._current_lrs(trainer)  # the scheduler has stepped: next epoch's
        if "val_acc" in record:
            w.add_scalar("val/acc", record["val_acc"], step)
        if self.val_loader is not None:
            for width in self.widths:
                acc = trainer.validation_accuracy(self.val_loader, self.bn_loader, width=width)
                w.add_scalar(f"val/acc/w{width:g}", acc, step)
        keep = trainer.model.keep_probs()
        for name, k in keep.items():
            w.add_histogram(f"keep_probs/{name}", k.float().cpu(), step)
        if keep:
            w.add_image("keep_probs", keep_probs_image(keep), step, dataformats="CHW")
        w.flush()

    def close(self) -> None:
        self.writer.close()
