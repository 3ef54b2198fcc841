"""The training objective: each width sampler's per-example negative ELBO (docs/METHODS.md#the-objective-each-width-samplers-own-negative-elbo).

For a mini-batch ``(x, y)`` of a training set of ``N`` examples,

``loss = sum_passes CE(model_r(x), y) + kl_weight(epoch) * KL / N + penalty (+ distillation)``,

where the passes of a step (widths and whether the ordering mask is drawn) come from the width
sampler, the KL is the ordering KL plus the weight KL weighted as the sampler says
(:attr:`~bnn_nested.training.samplers.WidthSampler.kl_keep`), and the penalty is the norm-control
regulariser's. One object computes it for the trainer, the Pyro SVI check and the benchmarks.

Example::

    objective = NegativeELBO(model, build_sampler(OrderingConfig()), n_train=len(train_set))
    loss, parts = objective(x, y, step=0, epoch=0, generator=torch.Generator())
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.config import OrderingConfig, TrainConfig
from bnn_nested.nn.model import NestedModel
from bnn_nested.regularization.base import Regularizer
from bnn_nested.training.samplers import WidthSampler, kl_weight_at

__all__ = ["NegativeELBO", "distillation_loss"]


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """``distill_weight * T^2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al. 2015), or the
    soft cross-entropy ``- sum softmax(t / T) log softmax(s / T)`` (same gradient, offset by the
    teacher's entropy) with ``distill_loss: soft_ce``; averaged over the batch."""
    t = cfg.distill_temperature
    log_p = F.log_softmax(student / t, -1)
    q = F.softmax(teacher / t, -1)
    per = -(q * log_p).sum(-1)
    if cfg.distill_loss == "kl":
        per = per + (q * F.log_softmax(teacher / t, -1)).sum(-1)
    return cfg.distill_weight * t * t * per.mean()


class NegativeELBO:
    """Per-example negative ELBO of one optimisation step (see the module docstring).

    Args:
        model: the nested model.
        sampler: the width sampler (which passes a step runs, which keep weights the KL).
        n_train: training-set size ``N`` (the KL is divided by it).
        ordering: KL weight schedule (``kl_weight``, ``kl_warmup_epochs``); default
            :class:`~bnn_nested.config.OrderingConfig`'s.
        regularizer: the norm-control penalty (default none).
        teacher: a frozen network distilled into every pass (``distill`` sets weight and
            temperature).
        autocast: a factory of the mixed-precision context of forward passes.
    """

    def __init__(
        self,
        model: NestedModel,
        sampler: WidthSampler,
        n_train: int,
        ordering: OrderingConfig | None = None,
        regularizer: Regularizer | None = None,
        teacher: nn.Module | None = None,
        distill: TrainConfig | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        self.model = model
        self.sampler = sampler
        self.n_train = n_train
        self.ordering = ordering or OrderingConfig()
        self.regularizer = regularizer or Regularizer()
        self.teacher = teacher
        self.distill = distill or TrainConfig()
        self.autocast = autocast

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its parts (``loss``, ``data``, ``kl``, ``penalty``, ``distill``)."""
        model = self.model
        data = x.new_zeros(())
        distill = x.new_zeros(())
        teacher: torch.Tensor | None = None
        original = None
        if self.teacher is not None:
            with torch.no_grad(), self.autocast():
                original = self.teacher(x).float()
        for i, p in enumerate(self.sampler.passes(step, generator)):
            with model.width(p.width), model.masking(p.mask), self.autocast():
                logits = model(x)
            logits = logits.float()
            if original is not None:
                distill = distill + distillation_loss(logits, original, self.distill)
            if p.distill and teacher is not None:
                data = data + torch.sum(-teacher * F.log_softmax(logits, -1), -1).mean()
            else:
                data = data + F.cross_entropy(logits, y)
            if i == 0:
                teacher = F.softmax(logits, -1).detach()
        kl_w = kl_weight_at(self.ordering, epoch)
        kl = model.kl(keep=self.sampler.kl_keep) * (kl_w / self.n_train)
        penalty = self.regularizer.penalty(model)
        loss = data + kl + penalty + distill
        parts = {"loss": loss, "data": data, "kl": kl, "penalty": penalty}
        if self.teacher is not None:
            parts["distill"] = distill
        return loss, {k: float(torch.as_tensor(v).detach()) for k, v in parts.items()}
