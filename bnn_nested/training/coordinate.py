"""Closed-form updates of the variational parameters: coordinate ascent of the ordering
posterior ``q(b)`` (``ordering.gradient: coordinate``) and the fixed-point update of Gaussian
weights' variances (``train.log_alpha_update: newton``).

**Ordering.** For fixed weights, the negative ELBO of one ordering unit's truncation ``b`` (hard
masks) is, per example, ``E_q[L(b)] + w / N * (E_q[C(b)] + KL(q || p))``, with ``L(b)`` the
expected data term at truncation ``b``, ``C(b)`` the weight KL of the groups ``1..b`` (nats over the
data set) and ``w`` the KL weight. Its minimiser over ``q`` has a closed form
(docs/METHODS.md#ordering-kl)::

    log q(b) = log p(b) - (N * L(b) + w * C(b)) / w + const.

No step size: after every epoch, :func:`loss_curves` measures ``L(b)`` at every truncation of every
unit on the same ``ordering.coordinate_examples`` training examples with the same weight noise
(common random numbers: the differences between truncations are not buried in batch-to-batch
noise), the other units at their posterior mode (mean field), and :func:`update` sets ``q``. ``C(b)``
is the cumulative sum of ``dKL_W / dP(b >= k)``, the weight KL each ordered group adds when kept,
by automatic differentiation of the model's weight KL in the keep probabilities. Training passes
draw ``b`` from ``1/2 q + 1/2 uniform``, so every width keeps training whatever ``q`` says.

Example::

    loss_curves(model, batches, seed=0)        # after an epoch: L(b) of every unit
    update(model, n_train, kl_weight=1.0)      # q(b) to its optimum
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nn.bayes import newton_log_alpha
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.nn.utils import call_model, traceless

__all__ = ["coordinate_units", "group_costs", "loss_curves", "newton_variances", "update"]

#: the smallest KL weight the updates divide by (a warm-up starts at 0)
MIN_KL_WEIGHT = 1e-3


def coordinate_units(model: nn.Module) -> list[OrderingUnit]:
    """The ordering units of ``model`` that learn by coordinate ascent."""
    return [
        m for m in model.modules() if isinstance(m, OrderingUnit) and m.gradient == "coordinate"
    ]


@torch.no_grad()
def loss_curves(model: nn.Module, batches: Iterable[tuple[Any, torch.Tensor]], seed: int) -> None:
    """Measure every coordinate unit's ``loss_curve``: the mean cross-entropy on ``batches`` (in
    training mode: batch statistics, sampled weights) with the unit at each truncation ``b`` and the
    other units at their posterior mode; every evaluation draws the same weight noise (``seed``).
    Leaves the model's buffers (batch-norm statistics) and the global random state as they were."""
    units = coordinate_units(model)
    if not units:
        return
    batches = list(batches)
    mode = model.training
    modes = [int(u.logits().argmax()) for u in units]
    devices = [d for d in {y.device for _, y in batches} if d.type == "cuda"]
    curves = [torch.zeros(u.K + 1, dtype=torch.float64) for u in units]
    model.train()
    try:
        with traceless(model, devices):
            for unit, curve in zip(units, curves):
                for other, b in zip(units, modes):
                    other.forced = b
                for b in range(unit.K + 1):
                    unit.forced = b
                    torch.manual_seed(seed)
                    total, count = 0.0, 0
                    for x, y in batches:
                        logits = call_model(model, x).float()
                        total += float(F.cross_entropy(logits, y, reduction="sum"))
                        count += len(y)
                    curve[b] = total / max(count, 1)
    finally:
        for u in units:
            u.forced = None
        model.train(mode)
    for unit, curve in zip(units, curves):  # after the buffers were put back
        unit.loss_curve.copy_(curve)


def group_costs(model: nn.Module, units: list[OrderingUnit]) -> list[torch.Tensor]:
    """``(K,)`` per unit: the weight KL (nats, whole data set) each ordered group adds when kept,
    ``d KL_W / d P(b >= k)`` at the current weights (zeros for point weights)."""
    leaves = [u.proposal_keep_probs().detach().requires_grad_() for u in units]
    for u, leaf in zip(units, leaves):
        u._keep_leaf = leaf
    try:
        with torch.enable_grad():
            kl = model.weight_kl("posterior")
        if not kl.requires_grad:
            return [torch.zeros_like(leaf) for leaf in leaves]
        grads = torch.autograd.grad(kl, leaves, allow_unused=True)
    finally:
        for u in units:
            u._keep_leaf = None
    return [torch.zeros_like(leaf) if g is None else g.detach() for g, leaf in zip(grads, leaves)]


@torch.no_grad()
def update(model: nn.Module, n_train: int, kl_weight: float) -> None:
    """Set every coordinate unit's ``q(b)`` to its optimum given its ``loss_curve`` (module
    docstring); a unit without a measured curve is left as it is."""
    units = coordinate_units(model)
    if not units:
        return
    costs = group_costs(model, units)
    w = max(kl_weight, MIN_KL_WEIGHT)
    for u, c in zip(units, costs):
        data = u.loss_curve
        if not bool(torch.isfinite(data).all()):
            continue
        cost = torch.cat([c.new_zeros(1), torch.cumsum(c, 0)]).to(data)
        logits = u.prior_logits.to(data) - (n_train * data + w * cost) / w
        u.set_logits_(logits - torch.logsumexp(logits, 0))


@torch.no_grad()
def newton_variances(model: nn.Module, kl_scale: float, rate: float) -> None:
    """``train.log_alpha_update: newton``: after the step's backward, move every Gaussian layer's
    posterior precisions toward their stationary values (:func:`~bnn_nested.nn.bayes.newton_log_alpha`)
    and drop the ``log_alpha`` gradients, so the optimiser leaves them alone. Needs the Gaussian
    prior; ``kl_scale`` is the step's KL weight over ``N``."""
    for m in model.modules():
        if not (isinstance(m, NestedMixin) and m.bayesian) or m.log_alpha.grad is None:
            continue
        if m.weight_prior != "gaussian":
            raise ValueError("train.log_alpha_update: 'newton' needs model.weight_prior: gaussian")
        keep = getattr(m, "kl_channel_keep", None)
        m.log_alpha.copy_(
            newton_log_alpha(
                m.weight, m.log_alpha, m.log_alpha.grad, keep, max(kl_scale, 1e-12), rate
            )
        )
        m.log_alpha.grad = None
