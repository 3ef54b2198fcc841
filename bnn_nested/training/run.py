"""A training run on disk: ``runs/NAME/{config.yaml, checkpoint.pt, history.json, keep_probs.json}``."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from bnn_nested.config import Config, build_config
from bnn_nested.data import DataSplits, load_dataset
from bnn_nested.io import atomic_write_json, atomic_write_text
from bnn_nested.models import build_model
from bnn_nested.nn.model import NestedModel
from bnn_nested.regularization.config import build_regularizer
from bnn_nested.training.checkpoint import load_checkpoint, save_checkpoint
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer, resolve_device

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


class RunExistsError(FileExistsError):
    """The run directory exists and ``overwrite`` was not given."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def build_model_for(cfg: Config, splits: DataSplits) -> NestedModel:
    """The model a config describes, with ordering units configured by its width sampler."""
    sampler = build_sampler(cfg.ordering)
    return build_model(cfg.model, sampler.ordering_kwargs(), splits.input_shape, splits.num_classes)


def make_loaders(cfg: Config, splits: DataSplits) -> tuple[DataLoader, DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(cfg.seed)
    kw: dict[str, Any] = {"num_workers": cfg.data.num_workers}
    train = DataLoader(splits.train, batch_size=cfg.data.batch_size, shuffle=True, generator=g, **kw)
    val = DataLoader(splits.val, batch_size=cfg.data.eval_batch_size, **kw)
    test = DataLoader(splits.test, batch_size=cfg.data.eval_batch_size, **kw)
    return train, val, test


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out``; refuse to touch an existing non-empty directory unless ``overwrite``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunExistsError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def train_run(cfg: Config, out: str | Path, quiet: bool = False, overwrite: bool = False) -> Path:
    """Train the configured model and write the run directory. Returns its path.

    Example:
        >>> run = train_run(load_config("configs/digits_mlp.yaml"), "runs/demo")
        >>> model, cfg, splits = load_run(run)
    """
    out = prepare_run_dir(out, overwrite)
    seed_everything(cfg.seed)
    splits = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model_for(cfg, splits)
    device = resolve_device(cfg.train.device)
    train_loader, val_loader, _ = make_loaders(cfg, splits)
    trainer = Trainer(
        model, cfg, n_train=splits.num_train, regularizer=build_regularizer(cfg.regularization),
        device=device, quiet=quiet,
    )
    atomic_write_text(out / CONFIG, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    trainer.fit(train_loader, val_loader)
    save_run_checkpoint(out, trainer, cfg, splits)
    atomic_write_json(out / "history.json", trainer.history)
    atomic_write_json(
        out / "keep_probs.json", {k: v.tolist() for k, v in model.keep_probs().items()}
    )
    return out


def save_run_checkpoint(out: Path, trainer: Trainer, cfg: Config, splits: DataSplits) -> Path:
    state = trainer.state_dict()
    state["config"] = cfg.to_dict()
    state["meta"] = {
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "num_train": splits.num_train,
    }
    return save_checkpoint(out / CHECKPOINT, state)


@dataclass
class LoadedRun:
    model: NestedModel
    config: Config
    splits: DataSplits
    checkpoint: dict[str, Any]


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild the trained model, its config and its data splits from a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    cfg = build_config(state["config"])
    splits = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model_for(cfg, splits)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return LoadedRun(model, cfg, splits, state)
