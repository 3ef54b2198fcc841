"""Batch-norm statistics of a run re-estimated per width on its training split
(docs/METHODS.md#batch-norm-per-width): after training, before each epoch's ``val_acc``, and for
widths a reader asks for that training did not calibrate."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from bnn_nested.data import DataSplits
from bnn_nested.nest import NestifiedModel
from bnn_nested.nn.batchnorm import nested_norms, recalibrate_bn


def recalibrate_bn_widths(
    model: NestifiedModel,
    splits: DataSplits,
    widths: list[float],
    batch_size: int = 512,
    device: str | torch.device | None = None,
) -> bool:
    """Re-estimate batch-norm statistics of ``widths`` on the training split (one pass, per width;
    docs/METHODS.md#batch-norm-per-width), on ``device`` (``None``: the model's). Returns ``False``
    (and does nothing) for models without nested batch norm."""
    if not nested_norms(model):
        return False
    recalibrate_bn(model, calibration_loader(splits, batch_size), widths, device=device)
    return True


def calibration_loader(splits: DataSplits, batch_size: int) -> DataLoader:
    """The training split, unshuffled: what batch norm is re-estimated on, at the end of training
    (:func:`recalibrate_bn_widths`) and before each epoch's ``val_acc`` (so the two agree)."""
    return DataLoader(splits.train, batch_size=batch_size)
