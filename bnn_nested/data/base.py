"""Common container for a data set split into train / validation / test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset


@dataclass
class DataSplits:
    """Train / validation / test splits of one data set.

    Attributes:
        train, val, test: map-style datasets yielding ``(x, y)`` with ``x`` a float tensor of
            shape ``input_shape`` and ``y`` an integer class index.
        num_classes: number of classes ``C``.
        input_shape: shape of one example, e.g. ``(64,)`` for flat digits or ``(1, 28, 28)``.
        name: data set name as used in configs.

    Example:
        >>> splits = load_dataset(DataConfig(name="digits"))
        >>> x, y = splits.train[0]
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    name: str

    @property
    def num_train(self) -> int:
        """Number of training examples ``N`` (the ELBO's KL is scaled by ``1 / N``)."""
        return len(self.train)  # type: ignore[arg-type]


def stratified_split(
    y: torch.Tensor | list[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Fixed-seed stratified train / val / test index split (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    labels = torch.as_tensor(y).cpu().numpy()
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_rel = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_rel, stratify=labels[rest], random_state=seed + 1
    )
    return sorted(train), sorted(val), sorted(test)
