"""Common container for a data set split into train / validation / test."""

from __future__ import annotations

import dataclasses
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

    Example::

        splits = load_dataset(DataConfig(name="digits"))
        x, y = splits.train[0]
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
    from sklearn.model_selection import (
        train_test_split,  # deferred: heavy (sklearn), only this path needs it
    )

    labels = torch.as_tensor(y).cpu().numpy()
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    val_rel = val_fraction / (1.0 - test_fraction)
    train, val = train_test_split(
        rest, test_size=val_rel, stratify=labels[rest], random_state=seed + 1
    )
    return sorted(train), sorted(val), sorted(test)


class _Relabelled(Dataset):
    """``base`` restricted to ``indices`` with labels mapped through ``mapping``."""

    def __init__(self, base: Dataset, indices: list[int], mapping: dict[int, int]) -> None:
        self.base, self.indices, self.mapping = base, indices, mapping

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, y = self.base[self.indices[i]]
        return x, self.mapping[int(y)]


def _labels(ds: Dataset) -> torch.Tensor:
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        return tensors[1]
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def hold_out_classes(splits: DataSplits, classes: list[int]) -> tuple[DataSplits, Dataset]:
    """Remove ``classes`` from every split (labels re-indexed to ``0..C-k-1``) and return the test
    examples of those classes as an OOD set (labels 0).

    Example::

        in_dist, ood_test = hold_out_classes(load_digits(), [8, 9])
    """

    bad = [c for c in classes if not 0 <= c < splits.num_classes]
    if bad or len(set(classes)) >= splits.num_classes:
        raise ValueError(
            f"data.held_out_classes must be distinct classes in [0, {splits.num_classes}) leaving at "
            f"least one in-distribution class, got {classes}"
        )
    keep = [c for c in range(splits.num_classes) if c not in classes]
    mapping = {c: i for i, c in enumerate(keep)}

    def restrict(ds: Dataset, wanted: set[int], relabel: dict[int, int]) -> Dataset:
        y = _labels(ds)
        idx = [i for i, v in enumerate(y.tolist()) if v in wanted]
        return _Relabelled(ds, idx, relabel)

    held = set(classes)
    ood = restrict(splits.test, held, {c: 0 for c in classes})
    new = dataclasses.replace(
        splits,
        train=restrict(splits.train, set(keep), mapping),
        val=restrict(splits.val, set(keep), mapping),
        test=restrict(splits.test, set(keep), mapping),
        num_classes=len(keep),
    )
    return new, ood
