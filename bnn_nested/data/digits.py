"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the default, offline data set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from bnn_nested.data.base import DataSplits, stratified_split


@dataclass
class DigitsSplits(DataSplits):
    """Digits splits plus the standardisation applied: ``x = (pixel - mean) / std`` per feature,
    raw pixels in ``pixel_range = (0, 16)``."""

    mean: torch.Tensor
    std: torch.Tensor
    pixel_range: tuple[float, float] = (0.0, 16.0)


def load_digits(
    val_fraction: float = 0.15, test_fraction: float = 0.2, seed: int = 0, flatten: bool = True
) -> DigitsSplits:
    """Fixed-seed stratified split of ``sklearn.datasets.load_digits``, standardised per feature.

    Mean and standard deviation come from the training split only (features with zero variance
    keep scale 1). Inputs have shape ``(64,)`` (``flatten=True``) or ``(1, 8, 8)``.

    Example::

        splits = load_digits(seed=0)
        len(splits.train), splits.num_classes
    """
    from sklearn.datasets import (
        load_digits as _sk_load,  # deferred: heavy (sklearn), only this path needs it
    )

    bunch = _sk_load()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.long)
    tr, va, te = stratified_split(y, val_fraction, test_fraction, seed)
    mean = x[tr].mean(0)
    std = x[tr].std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    x = (x - mean) / std
    shape: tuple[int, ...] = (64,) if flatten else (1, 8, 8)
    x = x.view((-1,) + shape)
    mean, std = mean.view(shape), std.view(shape)

    def part(idx: list[int]) -> TensorDataset:
        return TensorDataset(x[idx], y[idx])

    return DigitsSplits(part(tr), part(va), part(te), 10, shape, "digits", mean, std)
