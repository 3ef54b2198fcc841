"""Width samplers: what each training step runs (one trainer, one class per strategy).

* ``vou``: full width with learned Downhill masks (Cui et al. 2021).
* ``nested_dropout``: full width with hard masks from the fixed prior (Rippel et al. 2014).
* ``sandwich``: largest + smallest + ``k`` random widths, in-place distillation from the largest
  (Yu & Huang, *Universally Slimmable Networks*, 2019).
* ``fixed``: one width, no masks (the independently trained baseline).

A user module (listed under a config's ``imports``) adds its own with :func:`register_sampler`::

    @register_sampler("two_widths")
    class TwoWidths(WidthSampler):
        kl_keep = "all"  # both widths' channels are trained at every step

        def passes(self, step, generator):
            return [Pass(1.0, mask=False), Pass(0.5, mask=False, distill=True)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from bnn_nested.registry import Registry


@dataclass(frozen=True)
class Pass:
    """One forward pass of a training step."""

    width: float
    mask: bool
    distill: bool = False  # target = the first pass's (detached) predictive distribution
    scale: float = 1.0  # weight of the pass's data term (the mean over several mask draws)


class WidthSampler:
    """Base class. ``ordering_kwargs`` configures the model's ordering units; ``passes`` plans a step.

    ``kl_keep`` is how the sampler's own ELBO weights each channel's weight KL (passed to
    :meth:`~bnn_nested.nn.NestedModel.kl`): ``"posterior"`` for masked training (the keep
    probability under the masks it samples), ``"all"`` when every channel is always trained,
    or the width of a network trained at one fixed width.
    """

    name = "base"
    kl_keep: str | float = "posterior"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def ordering_kwargs(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "temperature": c.temperature,
            "prior": c.prior,
            "prior_pi": c.prior_pi,
            "init": "prior",
            "learn": False,
            "hard": True,
            "per_example": c.per_example,
        }

    def passes(self, step: int, generator: torch.Generator) -> list[Pass]:  # pragma: no cover
        raise NotImplementedError


class VOUSampler(WidthSampler):
    name = "vou"

    def ordering_kwargs(self) -> dict[str, Any]:
        kw = super().ordering_kwargs()
        # "importance": start at the prior; the run sets the importance profile after ordering
        init = "prior" if self.cfg.init == "importance" else self.cfg.init
        kw.update(init=init, learn=True, hard=self.cfg.hard, gradient=self.cfg.gradient)
        return kw

    @property
    def kl_keep(self) -> str:
        # keep-weighting is an ELBO term for hard masks; with relaxed masks a heuristic (the seed
        # paper's), see docs/METHODS.md#the-objective-each-width-samplers-own-negative-elbo
        return "posterior" if self.cfg.weight_kl == "keep" else "all"

    def passes(self, step, generator):
        if self.cfg.vou_distill:  # the unmasked full width teaches the masked pass
            return [Pass(1.0, mask=False), Pass(1.0, mask=True, distill=True)]
        if self.cfg.gradient == "score":  # two draws: each other's baseline (leave-one-out)
            return [Pass(1.0, mask=True, scale=0.5), Pass(1.0, mask=True, scale=0.5)]
        return [Pass(1.0, mask=True)]


class NestedDropoutSampler(WidthSampler):
    name = "nested_dropout"

    def passes(self, step, generator):
        return [Pass(1.0, mask=True)]


class SandwichSampler(WidthSampler):
    name = "sandwich"
    kl_keep = "all"  # the full width is trained at every step: every channel is in the model

    def passes(self, step, generator):
        lo = self.cfg.min_width
        k = self.cfg.sandwich_random
        rand = lo + (1.0 - lo) * torch.rand(k, generator=generator)
        d = self.cfg.distill
        return [Pass(1.0, mask=False), Pass(lo, mask=False, distill=d)] + [
            Pass(float(r), mask=False, distill=d) for r in rand
        ]


class FixedSampler(WidthSampler):
    name = "fixed"

    @property
    def kl_keep(self) -> float:  # channels beyond the width never enter the likelihood
        return self.cfg.fixed_width

    def passes(self, step, generator):
        return [Pass(self.cfg.fixed_width, mask=False)]


SAMPLERS: Registry[type[WidthSampler]] = Registry("width sampler", field="ordering.sampler")
for _cls in (VOUSampler, NestedDropoutSampler, SandwichSampler, FixedSampler):
    SAMPLERS.register(_cls.name, _cls)


def register_sampler(name: str, cls: type[WidthSampler] | None = None, *, replace: bool = False):
    """Add a width sampler (a :class:`WidthSampler` subclass) under ``name``, the value of
    ``ordering.sampler`` that selects it; a decorator without ``cls``."""

    def add(c: type[WidthSampler]) -> type[WidthSampler]:
        if not (isinstance(c, type) and issubclass(c, WidthSampler)):
            raise TypeError(
                f"register_sampler({name!r}): expected a WidthSampler subclass, got {c!r}"
            )
        return SAMPLERS.register(name, c, replace=replace)

    return add(cls) if cls is not None else add


def build_sampler(cfg: Any) -> WidthSampler:
    """Sampler named ``cfg.sampler`` (an :class:`~bnn_nested.config.OrderingConfig`)."""
    return SAMPLERS[cfg.sampler](cfg)


def temperature_at(cfg: Any, epoch: int) -> float:
    """Temperature schedule: constant, or ``max(floor, tau0 * exp(-rate * epoch))``."""
    if cfg.schedule == "constant":
        return cfg.temperature
    return max(
        cfg.temperature_min,
        cfg.temperature * math.exp(-cfg.anneal_rate * epoch),
    )


def kl_weight_at(cfg: Any, epoch: int) -> float:
    """KL weight with linear warm-up over ``kl_warmup_epochs`` (0 = none)."""
    if cfg.kl_warmup_epochs == 0:
        return cfg.kl_weight
    return cfg.kl_weight * min(1.0, (epoch + 1) / cfg.kl_warmup_epochs)
