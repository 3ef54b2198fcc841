"""Weight rescaling, WRS (Liu, Cui, Wan, Mao, Chan; arXiv 2102.03497),
docs/METHODS.md#weight-rescaling-wrs.

For a weight ``W`` followed by batch norm the network is invariant to ``W -> c W`` (c > 0), yet
discrete-time SGD makes ``||W||`` grow (shrinking the effective learning rate) and noise orthogonal
to the input span accumulates. WRS replaces weight decay on such weights by projecting them back
after optimizer steps::

    W_o <- t_o * W_o / ||W_o||          (granularity="filter": o = each output channel)
    W   <- t   * W   / ||W||_F          (granularity="layer")

with ``t = 1`` (``target="unit"``, the paper's choice) or the norms recorded at :meth:`setup`
(``target="initial"``). Weights *not* followed by a normalization layer (e.g. the classifier) get
ordinary coupled weight decay ``g <- g + other_weight_decay * w`` as a gradient edit in
:meth:`before_step` (identical to ``SGD(weight_decay=...)`` restricted to those weights); their
biases are never decayed. Granularity, frequency and the treatment of un-normalized layers are not
confirmed by the paper's text and are therefore options (defaults: per filter, every step, 5e-4).

Example::

    reg = WeightRescaling(example_input=x[:2]); reg.setup(model)
    loss.backward(); reg.before_step(model, opt); opt.step(); reg.after_step(model, step)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import torch
from torch import nn

from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.targets import (
    current_norms,
    filter_dim,
    find_norm_followed,
    rescale_,
    weight_layers,
)
from bnn_nested.regularization.weight_decay import add_coupled_decay_

Granularity = Literal["filter", "layer"]
RescaleTarget = Literal["unit", "initial"]


def _check_choice(value: str, options: type, field: str) -> None:
    accepted = get_args(options)
    if value not in accepted:
        raise ValueError(f"{field}: got {value!r}; accepted {', '.join(map(repr, accepted))}")


class NormProjection(Regularizer):
    """Shared machinery: find norm-followed weights, record their norms, decay the others.

    Subclasses decide what to project in :meth:`after_step`. ``setup(model, example_input)``
    resolves the targets (see :func:`~bnn_nested.regularization.targets.find_norm_followed`);
    ``state_dict`` keeps the target names and recorded norms so a resumed run projects to the
    same norms.
    """

    def __init__(
        self,
        granularity: Granularity = "filter",
        other_weight_decay: float = 5e-4,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        example_input: torch.Tensor | tuple | None = None,
        eps: float = 1e-12,
    ) -> None:
        _check_choice(granularity, Granularity, "granularity")
        if other_weight_decay < 0:
            raise ValueError(f"other_weight_decay: must be >= 0, got {other_weight_decay}")
        self.granularity = granularity
        self.other_weight_decay = float(other_weight_decay)
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.example_input = example_input
        self.eps = eps
        self.targets: list[str] = []
        self.initial_norms: dict[str, torch.Tensor] = {}
        self._layers: dict[str, nn.Module] = {}
        self._loaded: dict | None = None

    # -- hooks for subclasses -------------------------------------------------------------
    def _unregularized(self) -> list[str]:
        """Weight layers that get ordinary weight decay (default: all non-targets)."""
        return [n for n in self._layers if n not in self.targets]

    def _choose_targets(self, model: nn.Module, example_input) -> list[str]:
        return find_norm_followed(model, example_input, self.include, self.exclude)

    # -- Regularizer API ------------------------------------------------------------------
    def setup(self, model: nn.Module, example_input: torch.Tensor | tuple | None = None) -> None:
        """Find the targets and record their current norms.

        Args:
            model: the network.
            example_input: overrides the constructor's ``example_input`` for the hooked pass.
        """
        self._layers = weight_layers(model)
        if example_input is None:
            example_input = self.example_input
        if self._loaded is not None:  # resuming: keep the saved targets and norms
            self.load_state_dict(self._loaded)
            return
        self.targets = self._choose_targets(model, example_input)
        self.example_input = None  # do not keep a batch alive for the whole run
        self.initial_norms = {
            n: current_norms(self._weight(n), self.granularity, self._dim(n)).detach().clone()
            for n in self.targets
        }

    def before_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        add_coupled_decay_(
            (self._layers[n].weight for n in self._unregularized()), self.other_weight_decay
        )

    def state_dict(self) -> dict:
        return {
            "targets": list(self.targets),
            "initial_norms": {n: t.clone() for n, t in self.initial_norms.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore targets and recorded norms; works before or after :meth:`setup`."""
        self._loaded = state
        if self._layers:
            missing = [n for n in state["targets"] if n not in self._layers]
            if missing:
                raise ValueError(f"state: targets {missing} are not weight layers of the model")
        self.targets = list(state["targets"])
        self.initial_norms = {n: t.clone() for n, t in state["initial_norms"].items()}

    # -- helpers --------------------------------------------------------------------------
    def _weight(self, name: str) -> torch.Tensor:
        return self._layers[name].weight

    def _dim(self, name: str) -> int:
        return filter_dim(self._layers[name]) if self.granularity == "filter" else 0

    @torch.no_grad()
    def _project_targets(self, use_initial: bool) -> None:
        for n in self.targets:
            w = self._weight(n)
            target = self.initial_norms[n].to(w) if use_initial else 1.0
            rescale_(w, target, self.granularity, self._dim(n), self.eps)


class WeightRescaling(NormProjection):
    """WRS: rescale norm-followed weights to unit (or initial) norm every ``every`` steps.

    Args:
        granularity: ``"filter"`` (each output channel, a row of ``weight.view(out, -1)``) or
            ``"layer"`` (the whole tensor).
        target: ``"unit"`` (norm 1) or ``"initial"`` (norms recorded at :meth:`setup`).
        every: act after optimizer steps whose ``step`` is a multiple of ``every`` (the trainer's
            count of steps taken so far, 1 after the first step).
        other_weight_decay: coupled weight decay for weights not followed by normalization
            (gradient edit in ``before_step``; biases excluded). 0 disables it.
        include, exclude: ``fnmatch`` patterns of module names added to / removed from the
            detected targets.
        example_input: a small batch for the hooked forward pass that finds the targets (not
            needed if the model defines ``norm_followed_weights()``).
    """

    name = "wrs"

    def __init__(
        self,
        granularity: Granularity = "filter",
        target: RescaleTarget = "unit",
        every: int = 1,
        other_weight_decay: float = 5e-4,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        example_input: torch.Tensor | tuple | None = None,
        eps: float = 1e-12,
    ) -> None:
        super().__init__(granularity, other_weight_decay, include, exclude, example_input, eps)
        _check_choice(target, RescaleTarget, "target")
        if int(every) != every or every < 1:
            raise ValueError(f"every: must be an integer >= 1, got {every}")
        self.target = target
        self.every = int(every)

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        if step % self.every == 0:
            self._project_targets(use_initial=self.target == "initial")
