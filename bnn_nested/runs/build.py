"""A run from its config, before anything is written: the checks that need no data
(:func:`validate_run`), trust in the modules the config imports (:func:`check_run_imports`), and
what a run trains with (seeds, the model, the data loaders)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bnn_nested.config import Config, import_modules
from bnn_nested.data import DATASETS, DataSplits
from bnn_nested.models import build_model
from bnn_nested.models.registry import MODELS, check_model_options
from bnn_nested.nest import NestifiedModel, check_plain_state, read_plain_state
from bnn_nested.training.checkpoint import CheckpointError
from bnn_nested.training.distributed import DistContext, EpochSampler, env_world_size
from bnn_nested.training.optim import Precision, resolve_device
from bnn_nested.training.samplers import SAMPLERS, build_sampler
from bnn_nested.training.tensorboard import require_tensorboard


def seed_everything(seed: int) -> None:
    """Seed Python's, torch's and numpy's generators: the same ``seed`` on every rank gives the
    same masks and widths on all of them."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def build_model_for(cfg: Config, splits: DataSplits) -> NestifiedModel:
    """The model a config describes, with ordering units configured by its width sampler."""
    sampler = build_sampler(cfg.ordering)
    return build_model(cfg.model, sampler.ordering_kwargs(), splits.input_shape, splits.num_classes)


def make_loaders(
    cfg: Config,
    splits: DataSplits,
    dist: DistContext | None = None,
    device: torch.device | str = "cpu",
) -> tuple[DataLoader, DataLoader | None, DataLoader]:
    """Train / val / test loaders. The training order of epoch ``e`` depends only on
    ``(cfg.seed, e)`` (:class:`EpochSampler`), so a resumed run sees the same batches; with
    ``world_size`` ranks each takes ``data.batch_size / world_size`` examples of every global batch.
    Pinned memory on CUDA. The val loader is ``None`` for data without a validation split
    (``splits.has_val``): training then logs no ``val_acc`` and re-estimates no batch norm for it."""
    dist = dist or DistContext()
    if cfg.data.batch_size % dist.world_size:
        raise ValueError(
            f"data.batch_size ({cfg.data.batch_size}) is the global batch and must be divisible "
            f"by the number of processes ({dist.world_size})"
        )
    pin = torch.device(device).type == "cuda"
    kw: dict[str, Any] = {"num_workers": cfg.data.num_workers, "pin_memory": pin}
    sampler = EpochSampler(splits.train, cfg.seed, dist.rank, dist.world_size)
    train = DataLoader(
        splits.train,
        batch_size=cfg.data.batch_size // dist.world_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),
        **kw,
    )
    val = (
        DataLoader(
            splits.val,
            batch_size=cfg.data.eval_batch_size,
            generator=torch.Generator().manual_seed(cfg.seed),
            **kw,
        )
        if splits.has_val
        else None
    )
    test = DataLoader(
        splits.test,
        batch_size=cfg.data.eval_batch_size,
        generator=torch.Generator().manual_seed(cfg.seed),
        **kw,
    )
    return train, val, test


def imports_code(cfg: Config) -> bool:
    """Does the config import modules (``imports``, or ``model.name: import``)?"""
    return bool(cfg.imports) or cfg.model.name == "import"


#: Input shape and class count of the data sets whose shapes are known without reading them
#: (ImageFolder's are not), so a bad model config fails before any data is loaded.
KNOWN_INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (64,),
    "mnist5k": (1, 28, 28),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "svhn": (3, 32, 32),
}
KNOWN_NUM_CLASSES: dict[str, int] = {
    "digits": 10,
    "mnist5k": 10,
    "mnist": 10,
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "svhn": 10,
}


def validate_run(cfg: Config) -> torch.device:
    """Checks that need no data (run before anything is written or loaded); returns the device."""

    import_modules(cfg)  # the config's ``imports``: user modules that register models / data
    MODELS[cfg.model.name]  # unknown names: one line listing the accepted ones
    check_model_options(cfg.model)  # e.g. model.variant given to an mlp
    DATASETS[cfg.data.name]
    SAMPLERS[cfg.ordering.sampler]
    shape = KNOWN_INPUT_SHAPES.get(cfg.data.name)
    if shape is not None:  # build the model without memory: groups, hidden sizes, variants
        n_classes = KNOWN_NUM_CLASSES[cfg.data.name] - len(cfg.data.held_out_classes)
        try:
            with torch.device("meta"):
                kw = build_sampler(cfg.ordering).ordering_kwargs()
                meta = build_model(cfg.model, kw, shape, n_classes)
            if cfg.model.init_from:  # shapes, no memory
                path = cfg.model.init_from
                check_plain_state(read_plain_state(path), meta.net.state_dict(), path)
        except ValueError as err:
            msg = str(err)
            raise ValueError(msg if msg.startswith("model") else f"model: {msg}") from None
    if cfg.train.log == "tensorboard":
        require_tensorboard()
    device = resolve_device(cfg.train.device)
    Precision(cfg.train.precision, device)  # fp16 needs CUDA: refused before any file is written
    world = env_world_size()
    if cfg.data.batch_size % world:
        raise ValueError(
            f"data.batch_size ({cfg.data.batch_size}) must be divisible by WORLD_SIZE ({world})"
        )
    return device


class RunImportRefused(CheckpointError):
    """A run's config would import modules (run code) and the reader did not allow it."""


def check_run_imports(cfg: Config, allow_import: bool, path: str | Path) -> None:
    """Import the modules a run's config names (``imports``; ``model.name: import`` is imported
    when the model is built) only if the reader trusts the run: a run directory may come from
    someone else, and importing runs code. Without ``allow_import`` raise
    :class:`RunImportRefused` (one line naming ``path`` and ``--allow-import``)."""
    if not allow_import:
        names = [cfg.model.target] if cfg.model.name == "import" else []
        names += list(cfg.imports)
        if names:
            shown = ", ".join(repr(str(n)[:80]) for n in names[:3])
            raise RunImportRefused(
                f"{path}: its config imports {shown} (importing runs that code); pass "
                "--allow-import (allow_import=True) only for runs you trust"
            )
    import_modules(cfg)
