"""Coordinate ascent of the ordering posterior ``q(b)`` (``ordering.gradient: coordinate``).

For fixed weights, the negative ELBO of one ordering unit's truncation ``b`` (hard masks) is, per
example, ``E_q[L(b)] + w / N * (E_q[C(b)] + KL(q || p))``, with ``L(b)`` the expected data term at
truncation ``b``, ``C(b)`` the weight KL of the groups ``1..b`` (nats over the data set) and ``w``
the KL weight. Its minimiser over ``q`` has a closed form (docs/METHODS.md#ordering-kl)::

    log q(b) = log p(b) - (N * L(b) + w * C(b)) / w + const.

No step size: ``q(b)`` is set to this optimum after every step, from

* ``L(b)``: running, importance-weighted means of the data term of the passes. Each pass draws
  every unit's ``b`` from a proposal ``pi = 1/2 q + 1/2 uniform`` (so every width keeps training
  and keeps being measured, whatever ``q`` says); unit ``l``'s estimate at ``b_l`` weights the pass
  by ``prod_{j != l} q_j(b_j) / pi_j(b_j)`` (<= 2 per other unit), i.e. it estimates the loss with
  the other units' truncations drawn from their ``q``, the mean-field coordinate update. Sums
  decay with a horizon of ``horizon`` epochs, so old weights are forgotten.
* ``C(b)``: the cumulative sum of ``dKL_W / dP(b >= k)``, the weight KL each ordered group adds
  when kept, by automatic differentiation of the model's weight KL in the keep probabilities.

Until every truncation of a unit has been seen once, its ``q`` is left as it is.

Example::

    objective = NegativeELBO(model, sampler, n_train)   # ordering.gradient == "coordinate"
    ...  # each masked pass: record(model, data_term, batch_size / n_train)
    update(model, n_train, kl_weight)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bnn_nested.nn.ordering_unit import OrderingUnit

__all__ = ["coordinate_units", "group_costs", "record", "update"]

#: the smallest KL weight the update divides by (warm-up starts at 0: q -> argmin L)
MIN_KL_WEIGHT = 1e-3


def coordinate_units(model: nn.Module) -> list[OrderingUnit]:
    """The ordering units of ``model`` that learn by coordinate ascent."""
    return [
        m for m in model.modules() if isinstance(m, OrderingUnit) and m.gradient == "coordinate"
    ]


@torch.no_grad()
def record(model: nn.Module, loss: float, fraction: float, horizon: float) -> None:
    """Add one pass's data term ``loss`` (mean over its batch, a ``fraction`` of the training set)
    to the running estimates of the truncations the units drew; older sums decay by
    ``exp(-fraction / horizon)`` (a horizon of ``horizon`` epochs)."""
    draws = [(u, u.consume_draw()) for u in coordinate_units(model)]
    draws = [(u, d) for u, d in draws if d is not None]
    if not draws:
        return
    total = sum(ratio for _, (_, ratio) in draws)
    decay = math.exp(-fraction / horizon)
    for u, (b, ratio) in draws:
        weight = math.exp(total - ratio)  # the other units' q / pi at their draws
        u.coord_loss.mul_(decay)[b] += weight * loss
        u.coord_weight.mul_(decay)[b] += weight


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
    """Set every coordinate unit's ``q(b)`` to its optimum given the running estimates (module
    docstring); a unit with a truncation not yet seen is left as it is."""
    units = coordinate_units(model)
    if not units:
        return
    costs = group_costs(model, units)
    w = max(kl_weight, MIN_KL_WEIGHT)
    for u, c in zip(units, costs):
        if bool((u.coord_weight <= 0).any()):
            continue
        data = u.coord_loss / u.coord_weight  # (K + 1,) per-example data term at each b
        cost = torch.cat([c.new_zeros(1), torch.cumsum(c, 0)]).to(data)
        logits = u.prior_logits.to(data) - (n_train * data + w * cost) / w
        u.set_logits_(logits - torch.logsumexp(logits, 0))
