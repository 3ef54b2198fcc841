"""Base class of nested models: width passed explicitly or by a context manager, never global."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from bnn_nested.nn.bayes import LOG_ALPHA_MAX, LOG_ALPHA_MIN
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit

#: A width: a global fraction ``r in (0, 1]``, or groups kept per dimension ``{dimension: groups}``.
Width = float | Mapping[str, int]


class NestedModel(nn.Module):
    """The width API of a nested model, the state every nested model keeps the same way.

    :class:`~bnn_nested.nest.NestifiedModel` (what :func:`~bnn_nested.nest.nestify` and every
    config build) implements :meth:`set_width`, :meth:`ordering_units` and :meth:`weight_kl`; this
    class adds ``with model.width(r):``, masking and Monte-Carlo control, the KL and the
    post-step projection. It lives below :mod:`bnn_nested.nest`, so batch-norm calibration and
    training can name it.

    Example::

        logits = model(x, width=0.5)           # explicit
        with model.width(0.25): logits = model(x)   # context manager

    Reference: Cui et al., *Bayesian Nested Neural Networks*, CVPR 2021.
    """

    def __init__(self) -> None:
        super().__init__()
        self._current_width: Width = 1.0

    # -- width ---------------------------------------------------------------------------------
    def set_width(self, width: Width) -> None:  # pragma: no cover - abstract
        """Set the active width persistently (prefer ``with model.width(r):``)."""
        raise NotImplementedError

    @property
    def current_width(self) -> Width:
        return self._current_width

    @contextmanager
    def width(self, width: Width):
        """Run at ``width`` inside the block and restore the previous width afterwards."""
        previous = self._current_width
        try:
            self.set_width(width)
            yield self
        finally:
            self.set_width(previous)

    # -- ordering ------------------------------------------------------------------------------
    def ordering_units(self) -> Iterator[tuple[str, OrderingUnit]]:  # pragma: no cover - abstract
        """``(name, unit)`` of every ordering unit."""
        raise NotImplementedError

    @contextmanager
    def unit_flag(self, name: str, value: bool):
        """Set the boolean attribute ``name`` of every ordering unit to ``value`` inside the block
        (each unit's own value is restored afterwards)."""
        units = [u for _, u in self.ordering_units()]
        previous = [getattr(u, name) for u in units]
        for u in units:
            setattr(u, name, value)
        try:
            yield self
        finally:
            for u, p in zip(units, previous):
                setattr(u, name, p)

    def masking(self, enabled: bool = True):
        """Enable or disable Downhill mask sampling (in training mode) inside the block."""
        return self.unit_flag("masking", enabled)

    @contextmanager
    def stochastic(self, enabled: bool = True, samples: int | None = None):
        """Monte-Carlo mode inside the block: Bayesian layers sample their weights and dropout
        layers stay active even in ``eval()`` (used by :func:`~bnn_nested.evaluation.prediction.predict`).

        In ``eval()`` each Bayesian layer draws whole weight tensors from ``q(W)``: one per forward
        pass, or with ``samples = S`` one per sample-major block of ``batch / S`` inputs (``S``
        networks run in one batched forward pass)."""
        layers = [m for m in self.modules() if isinstance(m, NestedMixin)]
        drops = [m for m in self.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        prev_layers = [(m.stochastic, m.mc_samples) for m in layers]
        prev_drops = [m.training for m in drops]
        for m in layers:
            m.stochastic = enabled
            m.mc_samples = samples
        for m in drops:
            m.train(enabled or m.training)
        try:
            yield self
        finally:
            for m, (p, s) in zip(layers, prev_layers):
                m.stochastic = p
                m.mc_samples = s
            for m, p in zip(drops, prev_drops):
                m.train(p)

    def set_temperature(self, temperature: float) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        for _, u in self.ordering_units():
            u.temperature.fill_(temperature)

    def kl(self, keep: str | float = "posterior") -> torch.Tensor:
        """Ordering KL plus the weight KL, each output channel's weight KL weighted by ``keep``.

        ``keep`` says which channels the training objective uses (see
        :meth:`~bnn_nested.nn.OrderingUnit.channel_keep`): ``"posterior"`` (masked training, the
        keep probability), ``"all"`` (every channel, weight 1), or a width ``r`` (the channels of a
        network trained at the fixed width ``r``: 1 inside, 0 beyond). Each width sampler names its
        own (:attr:`~bnn_nested.training.samplers.WidthSampler.kl_keep`).
        """
        total = next(self.parameters()).new_zeros(())
        for _, u in self.ordering_units():
            total = total + u.kl()
        return total + self.weight_kl(keep)

    def weight_kl(self, keep: str | float = "posterior") -> torch.Tensor:  # pragma: no cover
        """The weight part of :meth:`kl`: each Gaussian layer's KL, each output channel weighted
        as ``keep`` says (0 for point weights)."""
        raise NotImplementedError

    @torch.no_grad()
    def project_(self) -> None:
        """Put constrained parameters back into their ranges after an optimiser step: continuation
        logits into ``[-5, 5]``, Gaussian ``log_alpha`` into ``[LOG_ALPHA_MIN, LOG_ALPHA_MAX]``
        (clipping inside the forward pass instead would stop their gradients outside the range)."""
        for _, u in self.ordering_units():
            u.project_()
        for m in self.modules():
            if isinstance(m, NestedMixin) and m.bayesian:
                m.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)
