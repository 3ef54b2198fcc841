"""A run that starts from trained weights (``model.init_from``, ``train.teacher``,
``model.order: importance``): load them, keep the teacher in the run, order channels by importance,
calibrate batch norm per width; and the kept teacher read back on ``--resume``."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

from bnn_nested.config import Config
from bnn_nested.data import DataSplits
from bnn_nested.io import atomic_write
from bnn_nested.nest import (
    NestifiedModel,
    check_plain_state,
    init_ordering_from_importance,
    load_plain_weights,
    order_by_importance,
    plain_copy,
    read_plain_state,
)
from bnn_nested.runs.batchnorm import recalibrate_bn_widths
from bnn_nested.training.checkpoint import CheckpointError
from bnn_nested.training.distributed import DistContext

#: Batches of the training split used for Taylor importance (Molchanov et al. 2019 use a few
#: hundred examples; 20 batches of 64 is 1,280).
TAYLOR_BATCHES = 20
TEACHER_FILE = "teacher.pt"


def _teacher_copy(model: NestifiedModel, path: str | None) -> nn.Module:
    """The plain network (mean weights, full-width BN statistics), loaded from ``path`` if given."""
    teacher = plain_copy(model)
    if path is not None:
        state = read_plain_state(path, "train.teacher")
        check_plain_state(state, teacher.state_dict(), path, "train.teacher")
        teacher.load_state_dict(state)
    return teacher


def prepare_from_trained(
    cfg: Config, model: NestifiedModel, splits: DataSplits, loader, out: Path, ctx: DistContext
) -> nn.Module | None:
    """From trained weights (issue: "from a trained network"): load ``model.init_from``, keep the
    teacher, order channels by importance, start the ordering posteriors at the importance profile,
    calibrate BN per width. Returns the teacher (or ``None``)."""
    if cfg.model.init_from:
        load_plain_weights(model, cfg.model.init_from)
    teacher = None
    if cfg.train.teacher:
        path = None if cfg.train.teacher == "original" else cfg.train.teacher
        teacher = _teacher_copy(model, path)
        if ctx.is_main:  # kept in the run, so --resume needs nothing outside it
            buf = io.BytesIO()
            torch.save(teacher.state_dict(), buf)
            atomic_write(out / TEACHER_FILE, lambda f: f.write(buf.getvalue()))
    if cfg.model.order == "importance":
        batches = TAYLOR_BATCHES if cfg.model.importance == "taylor" else None
        data = loader if cfg.model.importance == "taylor" else None
        profile = order_by_importance(model, cfg.model.importance, data, batches)
        if cfg.ordering.init == "importance":
            init_ordering_from_importance(model, profile)
    if cfg.model.init_from:
        recalibrate_bn_widths(model, splits, cfg.eval.widths, cfg.data.eval_batch_size, ctx.device)
    return teacher


def load_teacher(cfg: Config, model: NestifiedModel, out: Path) -> nn.Module | None:
    """The teacher a run kept in ``teacher.pt`` (resume)."""
    if not cfg.train.teacher:
        return None
    path = out / TEACHER_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: the run's teacher is missing; cannot resume distillation")
    return _teacher_copy(model, str(path))
