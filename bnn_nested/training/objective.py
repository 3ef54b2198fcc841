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
from bnn_nested.nn.ordering_unit import ordering_log_q
from bnn_nested.nn.utils import call_model
from bnn_nested.regularization.base import Regularizer
from bnn_nested.training.samplers import Pass, WidthSampler, kl_weight_at

__all__ = ["NegativeELBO", "PassLoss", "distillation_loss"]


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
        self._scored: list[tuple[torch.Tensor, torch.Tensor]] = []  # (log q(b), data) per pass

    def plan(self, step: int, generator: torch.Generator) -> list[Pass]:
        """The passes of step ``step`` (sandwich widths are drawn from ``generator``)."""
        self._scored = []
        return self.sampler.passes(step, generator)

    def score_term(self) -> torch.Tensor | None:
        """The score-function surrogate of the step's passes (``ordering.gradient: score``):
        ``sum_i (L_i - mean_{j != i} L_j) log q(b_i) / S`` over the ``S`` masked passes, with their
        data terms ``L`` detached (each pass's baseline is the mean of the others: leave-one-out,
        unbiased; Kool, van Hoof & Welling 2019). Its gradient in the ordering logits is an
        unbiased estimate of the gradient of ``E_q(b)[L(b)]``; its value is not part of the loss
        reported (docs/METHODS.md#ordering-kl)."""
        scored, self._scored = self._scored, []
        if len(scored) < 2:
            return None
        losses = torch.stack([lo for _, lo in scored])
        n = len(scored)
        baseline = (losses.sum() - losses) / (n - 1)
        return sum((lo - bl) * lq for (lq, _), lo, bl in zip(scored, losses, baseline)) / n

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """The frozen (not trained) teacher's logits on ``x`` (``None`` without a teacher)."""
        if self.teacher is None:
            return None
        with torch.no_grad(), self.autocast():
            return call_model(self.teacher, x).float()

    def pass_terms(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        p: Pass,
        target: torch.Tensor | None = None,
        original: torch.Tensor | None = None,
        epoch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """One pass's terms: ``data`` (cross-entropy, or the soft cross-entropy to ``target``, the
        first pass's detached predictive distribution, for a ``distill`` pass), ``distill`` (to the
        teacher's logits ``original``), ``probs`` (detached softmax: the later passes' target) and,
        when ``epoch`` is given (the step's last pass), ``kl`` (``kl_weight * KL / N``) and
        ``penalty``. ``loss`` is their sum: back-propagating every pass's ``loss`` gives the
        gradient of the step's loss."""
        model = self.model
        with model.width(p.width), model.masking(p.mask), self.autocast():
            logits = call_model(model, x)
        logits = logits.float()
        if p.distill and target is not None:
            data = torch.sum(-target * F.log_softmax(logits, -1), -1).mean()
        else:
            data = F.cross_entropy(logits, y)
        if p.mask:
            log_q = ordering_log_q(model)
            if log_q is not None:
                self._scored.append((log_q, data.detach()))
        data = data * p.scale
        terms = {"data": data, "probs": F.softmax(logits, -1).detach()}
        loss = data
        if original is not None:
            terms["distill"] = distillation_loss(logits, original, self.distill)
            loss = loss + terms["distill"]
        if epoch is not None:  # after the forward pass: a relaxed mask's KL scores its sample
            terms["kl"] = model.kl(keep=self.sampler.kl_keep) * (
                kl_weight_at(self.ordering, epoch) / self.n_train
            )
            terms["penalty"] = self.regularizer.penalty(model)
            loss = loss + terms["kl"] + terms["penalty"]
            surrogate = self.score_term()
            if surrogate is not None:
                loss = loss + surrogate
        terms["loss"] = loss
        return terms

    def summarize(self, terms: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The step's loss and its parts from its passes' :meth:`pass_terms` (the last one carries
        the KL and the penalty): ``loss = data + kl + penalty + distill``."""
        zero = terms[0]["data"].new_zeros(())
        data, distill = zero, zero
        for t in terms:
            data = data + t["data"]
            distill = distill + t.get("distill", zero)
        kl, penalty = terms[-1]["kl"], terms[-1]["penalty"]
        parts = {"loss": data + kl + penalty + distill, "data": data, "kl": kl, "penalty": penalty}
        if self.teacher is not None:
            parts["distill"] = distill
        return parts

    def __call__(
        self, x: torch.Tensor, y: torch.Tensor, step: int, epoch: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The step's loss and its parts (``loss``, ``data``, ``kl``, ``penalty``, ``distill``)."""
        original = self.teacher_logits(x)
        plan = self.plan(step, generator)
        terms: list[dict[str, torch.Tensor]] = []
        for i, p in enumerate(plan):
            target = terms[0]["probs"] if terms else None
            last = epoch if i == len(plan) - 1 else None
            terms.append(self.pass_terms(x, y, p, target, original, last))
        parts = self.summarize(terms)
        return parts["loss"], {k: float(torch.as_tensor(v).detach()) for k, v in parts.items()}


class PassLoss(nn.Module):
    """One pass of a :class:`NegativeELBO` as a module: the module that
    ``torch.nn.parallel.DistributedDataParallel`` wraps. Its output holds every term of the pass,
    the KL and the penalty included, so the autograd graph DDP inspects from the output reaches
    every parameter the step's loss uses.

    Example::

        ddp = DistributedDataParallel(PassLoss(objective), find_unused_parameters=True)
        terms = ddp(x, y, plan[0], epoch=epoch)   # same arguments as NegativeELBO.pass_terms
    """

    def __init__(self, objective: NegativeELBO) -> None:
        super().__init__()
        self.model = objective.model  # a submodule: DDP syncs the model's parameters
        self.objective = [objective]  # in a list: not a submodule (it is not an nn.Module)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        p: Pass,
        target: torch.Tensor | None = None,
        original: torch.Tensor | None = None,
        epoch: int | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.objective[0].pass_terms(x, y, p, target, original, epoch)
