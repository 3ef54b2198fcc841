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
            shape ``input_shape`` and ``y`` an integer class index in ``[0, num_classes)``.
            ``val`` may be empty (a loader may also return ``None``, read as empty): the data has
            no validation split (:attr:`has_val`); training then logs no ``val_acc``.
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
    def has_val(self) -> bool:
        """The data has a validation split (what ``select``, ``cascade``, temperature scaling and
        conformal sets are fitted on)."""
        return len(self.val) > 0  # type: ignore[arg-type]

    @property
    def num_train(self) -> int:
        """Number of training examples ``N`` (the ELBO's KL is scaled by ``1 / N``)."""
        return len(self.train)  # type: ignore[arg-type]


class EmptyDataset(Dataset):
    """No examples: the validation split of data that has none."""

    def __len__(self) -> int:
        return 0

    def __getitem__(self, i: int):
        raise IndexError("the data set has no validation split")


def check_splits(splits: object, name: str) -> DataSplits:
    """What a registered loader returned, checked before anything is trained: a
    :class:`DataSplits` with non-empty train and test splits, ``num_classes >= 2``, an
    ``input_shape`` of positive sizes, and first train / test examples ``(x, y)`` with ``x`` a float
    tensor of that shape and ``y`` a class in ``[0, num_classes)``. ``val=None`` becomes an empty
    split (no validation data). Returns the splits.

    Raises:
        ValueError: one line naming the loader (``data.name``) and what is wrong.
    """
    where = f"data.name {name!r}: the registered loader"
    if not isinstance(splits, DataSplits):
        what = "None" if splits is None else type(splits).__name__
        raise ValueError(
            f"{where} returned {what}, not DataSplits(train, val, test, num_classes, "
            "input_shape, name)"
        )
    if splits.val is None:
        splits.val = EmptyDataset()
    n = splits.num_classes
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"{where} returned num_classes={str(n)[:40]}; it must be an int >= 2")
    shape = splits.input_shape
    ok = isinstance(shape, (tuple, list)) and len(shape) > 0
    if not ok or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ValueError(
            f"{where} returned input_shape={str(shape)[:60]}; it must be a tuple of sizes > 0, "
            "e.g. (64,) or (1, 28, 28)"
        )
    splits.input_shape = tuple(shape)
    for part in ("train", "val", "test"):
        ds = getattr(splits, part)
        try:
            size = len(ds)
        except TypeError:
            raise ValueError(
                f"{where} returned a {part} split of type {type(ds).__name__} without a length; "
                "use a map-style Dataset (e.g. TensorDataset)"
            ) from None
        if size == 0 and part != "val":
            raise ValueError(f"{where} returned no examples: the {part} split is empty")
        if size:
            _check_example(ds, part, splits, where)
    return splits


def _check_example(ds: Dataset, part: str, splits: DataSplits, where: str) -> None:
    try:
        x, y = ds[0]
    except Exception as err:  # the user's dataset: any failure is a one-line message
        raise ValueError(
            f"{where}: {part}[0] is not an (x, y) pair ({type(err).__name__}: "
            f"{str(err).strip()[:80]})"
        ) from None
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(
            f"{where}: {part}[0] x must be a float tensor, got "
            f"{getattr(x, 'dtype', type(x).__name__)}"
        )
    if tuple(x.shape) != splits.input_shape:
        raise ValueError(
            f"{where}: {part}[0] x has shape {tuple(x.shape)} but input_shape is "
            f"{splits.input_shape}"
        )
    try:
        label = int(y)
    except (TypeError, ValueError, RuntimeError):
        label = None
    if label is None or not 0 <= label < splits.num_classes:
        raise ValueError(
            f"{where}: {part}[0] label {str(y)[:40]} is not a class in "
            f"[0, num_classes={splits.num_classes})"
        )
    tensors = getattr(ds, "tensors", None)  # a TensorDataset: every label is checked at once
    if isinstance(tensors, tuple) and len(tensors) == 2 and isinstance(tensors[1], torch.Tensor):
        labels = tensors[1]
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{where}: {part} labels must be integers, got {labels.dtype}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= splits.num_classes:
            raise ValueError(
                f"{where}: {part} labels span [{lo}, {hi}], outside [0, "
                f"num_classes={splits.num_classes})"
            )


def stratified_split(
    y: torch.Tensor | list[int], val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """Fixed-seed stratified train / val / test index split (scikit-learn's ``train_test_split``).

    ``val_fraction == 0``: no validation split (``val`` is empty; the test split is the same as
    with any other ``val_fraction``)."""
    from sklearn.model_selection import (
        train_test_split,  # deferred: heavy (sklearn), only this path needs it
    )

    labels = torch.as_tensor(y).cpu().numpy()
    idx = list(range(len(labels)))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    if val_fraction == 0:
        return sorted(rest), [], sorted(test)
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
