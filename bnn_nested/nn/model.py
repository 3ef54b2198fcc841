"""Base class of nested models: width passed explicitly or by a context manager, never global."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from bnn_nested.nn.batchnorm import _NestedBatchNorm, width_key
from bnn_nested.nn.bayes import LOG_ALPHA_MAX, LOG_ALPHA_MIN
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit, active_groups

#: A width: a global fraction ``r in (0, 1]``, or per-layer group counts ``{layer_name: groups}``.
Width = float | Mapping[str, int]


class NestedModel(nn.Module):
    """A model whose nested layers all follow one width.

    Subclasses implement :meth:`forward_full` (the forward pass, unaware of width); this class adds
    ``forward(x, width=None)``, ``with model.width(r):``, masking control, and the ordering KL.

    Example::

        logits = model(x, width=0.5)           # explicit
        with model.width(0.25): logits = model(x)   # context manager

    Reference: Cui et al., *Bayesian Nested Neural Networks*, CVPR 2021.
    """

    def __init__(self) -> None:
        super().__init__()
        self._current_width: Width = 1.0

    # -- width ---------------------------------------------------------------------------------
    def nested_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for name, m in self.named_modules():
            if isinstance(m, NestedMixin):
                yield name, m

    def ordered_layers(self) -> Iterator[tuple[str, nn.Module]]:
        for name, m in self.nested_layers():
            if m.ordered:
                yield name, m

    def set_width(self, width: Width) -> None:
        """Set the active width persistently (prefer ``with model.width(r):``)."""
        if isinstance(width, Mapping):
            known = dict(self.ordered_layers())
            unknown = set(width) - set(known)
            if unknown:
                raise ValueError(
                    f"width: unknown layer(s) {sorted(unknown)}; ordered layers are {sorted(known)}"
                )
            for name, n in width.items():  # validate everything before changing anything
                if not isinstance(n, int) or not 1 <= n <= known[name].order_groups:
                    raise ValueError(
                        f"width[{name!r}]: active groups must be an int in "
                        f"[1, {known[name].order_groups}], got {n!r}"
                    )
            for name, layer in self.ordered_layers():
                layer.set_active_groups(width.get(name))
        else:
            width = float(width)
            active_groups(width, 2, 0)  # validates (0, 1]
            for _, layer in self.nested_layers():
                layer.set_width(width)
        self._current_width = width
        key = width_key(width)
        for m in self.modules():
            if isinstance(m, _NestedBatchNorm):
                m.width_key = key

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

    def forward(self, x: torch.Tensor, width: Width | None = None) -> torch.Tensor:
        if width is None:
            return self.forward_full(x)
        with self.width(width):
            return self.forward_full(x)

    def forward_full(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- ordering ------------------------------------------------------------------------------
    def ordering_units(self) -> Iterator[tuple[str, OrderingUnit]]:
        for name, m in self.named_modules():
            if isinstance(m, OrderingUnit):
                yield name, m

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
        layers = [m for _, m in self.nested_layers()]
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

    def keep_probs(self) -> dict[str, torch.Tensor]:
        """Learned keep probability ``P(b >= k)`` of each ordered group, per ordering unit."""
        return {name: u.keep_probs().detach() for name, u in self.ordering_units()}

    def weight_kl_pairs(self) -> list[tuple[nn.Module, OrderingUnit | None]]:
        """(layer, ordering unit of its outputs) pairs for the weight KL; override in subclasses."""
        return [(m, None) for _, m in self.nested_layers()]

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

    def weight_kl(self, keep: str | float = "posterior") -> torch.Tensor:
        """The weight part of :meth:`kl` (0 for point weights)."""
        total = next(self.parameters()).new_zeros(())
        for layer, unit in self.weight_kl_pairs():
            if not getattr(layer, "bayesian", False):
                continue  # point weights: no weight KL
            ck = unit.channel_keep(keep) if unit is not None else None
            total = total + layer.weight_kl(ck)
        return total

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
