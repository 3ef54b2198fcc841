"""Training: the loop, its objective, the optimisation step, width samplers, checkpoints and
multi-process training. (The Pyro interop, :mod:`bnn_nested.training.pyro_svi`, imports Pyro and
is not imported here.)"""

from __future__ import annotations

from bnn_nested.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bnn_nested.training.distributed import DistContext, EpochSampler, setup_distributed
from bnn_nested.training.objective import NegativeELBO, distillation_loss
from bnn_nested.training.optim import (
    OptimizerStep,
    Precision,
    make_optimizer,
    make_scheduler,
    resolve_device,
)
from bnn_nested.training.policy import CheckpointPolicy, SigintStop
from bnn_nested.training.samplers import (
    SAMPLERS,
    Pass,
    WidthSampler,
    build_sampler,
    register_sampler,
)
from bnn_nested.training.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = [
    "CheckpointError",
    "CheckpointPolicy",
    "DistContext",
    "EpochSampler",
    "NegativeELBO",
    "NonFiniteLossError",
    "OptimizerStep",
    "Pass",
    "Precision",
    "SAMPLERS",
    "SigintStop",
    "Trainer",
    "TrainingInterrupted",
    "WidthSampler",
    "build_sampler",
    "distillation_loss",
    "load_checkpoint",
    "make_optimizer",
    "make_scheduler",
    "register_sampler",
    "resolve_device",
    "save_checkpoint",
    "setup_distributed",
]
