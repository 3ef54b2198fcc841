"""Train a nested model with Pyro's SVI: a model/guide pair over the same :class:`NestedModel`.

Generative model (per ordering unit ``u`` and data point ``n``)::

    m_u ~ Downhill(prior logits of u, tau)               # truncation mask, prior p(b)
    y_n ~ Categorical(logits = f(x_n; W, {m_u}))         # under pyro.plate, scaled to N

Guide: ``m_u ~ Downhill(posterior logits of u, tau)`` (the unit's learned ``q(b)``). With
:class:`pyro.infer.TraceMeanField_ELBO` the ordering KL is analytic for hard masks (the
``kl_divergence`` registered for two hard :class:`~bnn_nested.distributions.Downhill` is the
categorical KL between truncations); for relaxed masks it has no closed form and Pyro falls back to
``log q(m) - log p(m)`` at the sampled mask, the estimate the trainer uses. Gaussian
weights keep their local-reparameterisation noise inside the forward pass; their keep-probability-
weighted KL enters the model as ``pyro.factor("weight_kl", -KL)``. Divided by ``N``, the SVI loss is
the built-in trainer's per-example loss with the ``vou`` sampler (``kl_weight = 1``, no regularizer).

Example::

    pm = PyroNestedModel(model, n_train=len(train_set))
    svi = pyro.infer.SVI(pm.model, pm.guide, pyro.optim.Adam({"lr": 1e-3}), TraceMeanField_ELBO())
    loss = svi.step(x, y) / len(train_set)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch

from bnn_nested.distributions import Downhill
from bnn_nested.nn.model import NestedModel
from bnn_nested.nn.ordering_unit import OrderingUnit


def site_name(unit_name: str) -> str:
    """Pyro sample site of an ordering unit's mask."""
    return f"order/{unit_name}"


@contextmanager
def fixed_masks(model: NestedModel, masks: dict[str, torch.Tensor]) -> Iterator[NestedModel]:
    """Inside the block, ordering unit ``name`` uses ``masks[name]`` (shape ``(K,)``) as its mask."""
    units = dict(model.ordering_units())
    patched: list[OrderingUnit] = []
    try:
        for name, m in masks.items():
            u = units[name]
            u.sample_mask = lambda batch=None, u=u, m=m: u.expand_groups(m)  # type: ignore[method-assign]
            patched.append(u)
        yield model
    finally:
        for u in patched:
            del u.sample_mask


class PyroNestedModel:
    """Model/guide pair for ``pyro.infer.SVI`` over a nested model trained at full width with masks
    (the ``vou`` strategy).

    Args:
        net: the nested model; its ordering units must have ``per_example=False``.
        n_train: training-set size ``N`` (the likelihood of a mini-batch is scaled by ``N / B``).
        name: prefix of the parameters in Pyro's param store.

    Example::

        pm = PyroNestedModel(net, n_train=3250)
        elbo = TraceMeanField_ELBO().differentiable_loss(pm.model, pm.guide, x, y) / 3250
    """

    def __init__(self, net: NestedModel, n_train: int, name: str = "nested") -> None:
        if n_train < 1:
            raise ValueError(f"n_train must be >= 1, got {n_train}")
        bad = [n for n, u in net.ordering_units() if u.per_example]
        if bad:
            raise ValueError(f"per_example: must be False for Pyro SVI, set on {bad}")
        self.net = net
        self.n_train = n_train
        self.name = name

    def _units(self) -> list[tuple[str, OrderingUnit]]:
        return [(n, u) for n, u in self.net.ordering_units() if u.masking]

    def model(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Prior over masks, forward pass, weight-KL factor and the scaled likelihood."""
        pyro.module(self.name, self.net)
        self.net.train()
        masks = {}
        for name, u in self._units():
            prior = Downhill(u.prior_logits, u.temperature, hard=u.hard)
            masks[name] = pyro.sample(site_name(name), prior)
        with fixed_masks(self.net, masks):
            logits = self.net(x)
        # the keep-probability-weighted weight KL (0 for point weights), the trainer's
        pyro.factor("weight_kl", -self.net.weight_kl("posterior"))
        idx = torch.arange(x.shape[0], device=x.device)
        with pyro.plate("data", size=self.n_train, subsample=idx):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits

    def guide(self, x: torch.Tensor, y: torch.Tensor | None = None) -> None:
        """The learned ordering posteriors ``q(b)`` of every unit, as Downhill distributions."""
        pyro.module(self.name, self.net)
        for name, u in self._units():
            pyro.sample(site_name(name), Downhill(u.logits(), u.temperature, hard=u.hard))
