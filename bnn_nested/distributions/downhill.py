"""The Downhill distribution: a reparameterised relaxation of an ordered truncation mask.

Construction (docs/METHODS.md#downhill-distribution; Cui et al., *Bayesian Nested Neural Networks*,
CVPR 2021): draw a relaxed one-hot ``s`` over the ``K + 1`` truncation indices from a Concrete /
Gumbel-softmax distribution (Maddison et al. 2017; Jang et al. 2017) with logits ``log q(b)`` and
temperature ``tau``, and map it to the mask ``m_k = sum_{j >= k} s_j`` for ``k = 1..K``. The mask
is non-increasing ("downhill") in ``[0, 1]``; as ``tau -> 0`` it becomes ``(1, .., 1, 0, .., 0)``
with ``b`` ones.

The map ``s -> m`` is affine with a unit-triangular Jacobian, so the density of ``m`` equals the Concrete
density of its successive differences ``s = (1 - m_1, m_1 - m_2, .., m_{K-1} - m_K, m_K)``.

Which KL belongs in the ELBO (docs/METHODS.md#ordering-kl):

* **hard masks** (straight-through): the likelihood sees the discrete truncation ``b``, so the exact
  KL is the one between the truncation categoricals, ``KL(q(b) || p(b))`` (registered for two hard
  Downhills);
* **relaxed masks**: the latent the likelihood sees is the relaxed mask itself. The KL between two
  Concrete (hence two Downhill) distributions of equal temperature has no closed form and is
  ``>=`` the categorical KL (data processing), so the categorical KL is *not* an upper bound of the
  negative ELBO there. Use the Monte-Carlo estimate ``log q(m) - log p(m)`` on the sampled mask
  (:func:`downhill_kl_mc`; Maddison, Mnih & Teh, *The Concrete Distribution*, ICLR 2017, §C). The
  registered KL refuses (``NotImplementedError``), so Pyro's ``TraceMeanField_ELBO`` falls back to
  the same estimate.
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints
from torch.distributions.kl import register_kl
from torch.distributions.utils import broadcast_all

from bnn_nested.distributions.ordering import categorical_kl, keep_probs_from_logits


class _Downhill(constraints.Constraint):
    """Non-increasing vectors with entries in ``[0, 1]`` (event dimension 1)."""

    event_dim = 1

    def check(self, value: torch.Tensor) -> torch.Tensor:
        in_range = ((value >= 0) & (value <= 1)).all(-1)
        if value.shape[-1] < 2:
            return in_range
        return in_range & (value[..., 1:] <= value[..., :-1]).all(-1)

    def __repr__(self) -> str:
        return "downhill"


downhill = _Downhill()


def masks_to_simplex(value: torch.Tensor) -> torch.Tensor:
    """Successive differences ``(1 - m_1, m_1 - m_2, .., m_K)``: ``(..., K) -> (..., K + 1)``."""
    one = torch.ones_like(value[..., :1])
    zero = torch.zeros_like(value[..., :1])
    upper = torch.cat([one, value], dim=-1)
    lower = torch.cat([value, zero], dim=-1)
    return upper - lower


def simplex_to_masks(s: torch.Tensor) -> torch.Tensor:
    """``m_k = sum_{j >= k} s_j`` for ``k = 1..K``: ``(..., K + 1) -> (..., K)``."""
    return torch.flip(torch.cumsum(torch.flip(s[..., 1:], [-1]), -1), [-1])


def downhill_rsample(
    logits: torch.Tensor, temperature: torch.Tensor | float, hard: bool = False
) -> torch.Tensor:
    """One reparameterised Downhill sample per row of ``logits (..., K + 1)`` -> ``(..., K)``.

    ``s = softmax((logits + Gumbel) / tau)``, ``m_k = sum_{j >= k} s_j``; with ``hard`` the mask is
    ``1[k <= argmax s]`` with the straight-through gradient of the relaxed mask. ``temperature`` must
    broadcast against ``logits``. The sampler behind :meth:`Downhill.rsample` (no validation, no
    distribution object: the training hot path of :class:`~bnn_nested.nn.OrderingUnit`).

    The sample carries the log of its simplex point as ``sample._log_simplex`` (computed by
    ``log_softmax``, exact where the successive differences of ``m`` have lost their digits), which
    :meth:`Downhill.log_prob` and :func:`downhill_kl_mc` use. The mask is clamped to ``[0, 1]``: in
    float32 the softmax can sum to ``1 + 1 ulp``, which would put ``m_1`` outside the support.
    """
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(tiny, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    log_s = torch.log_softmax((logits + gumbel) / temperature, dim=-1)
    s = log_s.exp()
    soft = simplex_to_masks(s).clamp(0.0, 1.0)
    soft._log_simplex = log_s
    if not hard:
        return soft
    b = s.argmax(-1, keepdim=True)
    k = torch.arange(1, s.shape[-1], device=s.device)
    out = (k <= b).to(s.dtype) - soft.detach() + soft
    out._unquantize = soft  # log_prob scores the relaxed sample (straight-through convention)
    out._log_simplex = log_s
    return out


def _log_simplex(value: torch.Tensor) -> torch.Tensor:
    """``log s`` of a mask: stored by the sampler, else from its successive differences."""
    stored = getattr(value, "_log_simplex", None)
    if stored is not None:
        return stored
    s = masks_to_simplex(value).clamp_min(torch.finfo(value.dtype).tiny)
    return s.log()


def concrete_log_density(
    logits: torch.Tensor, log_s: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    r"""Concrete log-density at the simplex point ``exp(log_s)`` (Maddison et al. 2017, Def. 1).

    ``log p(s) = log (n-1)! + (n-1) log tau + sum_i (l_i - (tau + 1) log s_i)
    - n logsumexp_i(l_i - tau log s_i)``, ``l`` normalised logits ``(..., n)``, ``tau`` broadcast to
    the batch shape with a trailing dimension of 1."""
    n = logits.shape[-1]
    return (
        math.lgamma(n)
        + (n - 1) * torch.log(tau.squeeze(-1) if tau.dim() else tau)
        + (logits - (tau + 1) * log_s).sum(-1)
        - n * torch.logsumexp(logits - tau * log_s, dim=-1)
    )


def downhill_kl_mc(q: Downhill, p: Downhill, value: torch.Tensor) -> torch.Tensor:
    r"""Monte-Carlo estimate of ``KL(q || p)`` between relaxed Downhills: ``log q(m) - log p(m)``.

    ``value`` is a sample of ``q`` (one estimate per sample; average them). Unbiased for the relaxed
    KL, and differentiable in ``q``'s logits both directly and through a reparameterised sample
    (Maddison et al. 2017, §C). Each density is taken at its own temperature
    (docs/METHODS.md#ordering-kl). At equal temperatures the ``(tau + 1) log s`` terms of the two
    densities cancel, so only
    ``sum_i (lq_i - lp_i) - n [logsumexp(lq - tau log s) - logsumexp(lp - tau log s)]`` is computed;
    otherwise the two Concrete log-densities are subtracted in full.

    Example::

        m = q.rsample()
        kl = downhill_kl_mc(q, p, m)    # one-sample estimate, shape q.batch_shape
    """
    if q.K != p.K:
        raise ValueError(f"downhill_kl_mc needs equal K, got {q.K} and {p.K}")
    log_s = _log_simplex(getattr(value, "_unquantize", value))
    tq, tp = broadcast_all(q.temperature, p.temperature)
    if torch.equal(tq, tp):
        return concrete_log_ratio(q.logits, p.logits, log_s, q._tau())
    return concrete_log_density(q.logits, log_s, q._tau()) - concrete_log_density(
        p.logits, log_s, p._tau()
    )


def concrete_log_ratio(
    q_logits: torch.Tensor, p_logits: torch.Tensor, log_s: torch.Tensor, tau: torch.Tensor | float
) -> torch.Tensor:
    """``log q(s) - log p(s)`` of two Concretes of equal temperature at ``exp(log_s)``.

    ``q_logits, p_logits`` normalised ``(..., n)``; ``tau`` scalar or ``(..., 1)``. The functional
    core of :func:`downhill_kl_mc` (used by :class:`~bnn_nested.nn.OrderingUnit` on its hot path)."""
    n = q_logits.shape[-1]
    return (q_logits - p_logits).sum(-1) - n * (
        torch.logsumexp(q_logits - tau * log_s, dim=-1)
        - torch.logsumexp(p_logits - tau * log_s, dim=-1)
    )


class Downhill(TorchDistribution):
    r"""Downhill distribution over non-increasing masks ``m in [0, 1]^K``.

    Args:
        logits: ``(..., K + 1)`` log-probabilities (up to a constant) of the truncation index
            ``b in {0..K}``; see :func:`~bnn_nested.distributions.stick_breaking_logits`.
        temperature: Concrete temperature ``tau > 0`` (scalar or broadcastable to the batch shape).
        hard: if ``True``, samples are exact 0/1 masks with ``b`` leading ones and straight-through
            gradients of the relaxed sample (Jang et al. 2017). ``log_prob`` of such a sample scores the
            relaxed sample it came from (as Pyro's ``RelaxedOneHotCategoricalStraightThrough`` does).

    ``batch_shape = logits.shape[:-1]``, ``event_shape = (K,)``. ``log_prob`` is the exact density
    (Concrete density of the successive differences; the map has unit Jacobian).

    Example:
        >>> from bnn_nested.distributions import stick_breaking_logits
        >>> d = Downhill(stick_breaking_logits(torch.full((7,), 3.0)), temperature=0.5)
        >>> m = d.rsample()          # non-increasing, differentiable in the logits
        >>> m.shape, bool((m.diff() <= 0).all())
        (torch.Size([7]), True)

    Reference: Cui et al., *Bayesian Nested Neural Networks*, CVPR 2021 (arXiv 2101.11353).
    """

    arg_constraints = {"logits": constraints.real_vector, "temperature": constraints.positive}
    support = downhill
    has_rsample = True

    def __init__(
        self,
        logits: torch.Tensor,
        temperature: torch.Tensor | float,
        hard: bool = False,
        validate_args: bool | None = None,
    ) -> None:
        if logits.dim() < 1 or logits.shape[-1] < 2:
            raise ValueError(
                f"logits must have last dimension K + 1 >= 2, got shape {tuple(logits.shape)}"
            )
        batch_shape = logits.shape[:-1]
        temperature = torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
        try:
            ok = torch.broadcast_shapes(temperature.shape, batch_shape) == batch_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"temperature of shape {tuple(temperature.shape)} does not broadcast to the batch "
                f"shape {tuple(batch_shape)}"
            )
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.temperature = temperature
        self.hard = bool(hard)
        super().__init__(batch_shape, torch.Size([logits.shape[-1] - 1]), validate_args)

    @property
    def K(self) -> int:
        """Number of ordered groups."""
        return self.event_shape[0]

    @property
    def probs(self) -> torch.Tensor:
        """``q(b)`` for ``b = 0..K``, shape ``(..., K + 1)``."""
        return self.logits.exp()

    @property
    def keep_probs(self) -> torch.Tensor:
        """``P(b >= k)``, the zero-temperature mean of the mask, shape ``(..., K)``."""
        return keep_probs_from_logits(self.logits)

    @property
    def mean(self) -> torch.Tensor:  # the tau -> 0 limit; the relaxed mean has no closed form
        return self.keep_probs

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(Downhill, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.logits.shape[-1:])
        new.temperature = (
            self.temperature.expand(batch_shape) if self.temperature.dim() else self.temperature
        )
        new.hard = self.hard
        super(Downhill, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _tau(self) -> torch.Tensor:
        return self.temperature.unsqueeze(-1) if self.temperature.dim() else self.temperature

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))[:-1] + self.logits.shape[-1:]
        return downhill_rsample(self.logits.expand(shape), self._tau(), self.hard)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r"""Exact log-density: the Concrete log-density of ``s = masks_to_simplex(value)``.

        ``log p(s) = log (n-1)! + (n-1) log tau + sum_i (logit_i - (tau + 1) log s_i)
        - n logsumexp_i(logit_i - tau log s_i)`` with ``n = K + 1`` (Maddison et al. 2017, Def. 1).

        A sample of :meth:`rsample` is scored from the ``log s`` the sampler computed (accurate at
        any temperature). Any other value is scored from its successive differences
        ``m_k - m_{k+1}``: at ``tau <= 0.5`` these are often below float32 resolution next to
        ``m_k ~ 1``, and the log-density can then be off by hundreds of nats; score such values in
        float64.
        """
        value = getattr(value, "_unquantize", value)
        if self._validate_args:
            self._validate_sample(value)
        return concrete_log_density(self.logits, _log_simplex(value), self._tau())

    def entropy_of_truncation(self) -> torch.Tensor:
        """Entropy of the truncation categorical ``q(b)``."""
        return -(self.probs * self.logits).sum(-1)


@register_kl(Downhill, Downhill)
def _kl_downhill_downhill(q: Downhill, p: Downhill) -> torch.Tensor:
    """``KL(q(b) || p(b))`` between the truncation categoricals, for two *hard* Downhills.

    Exact when the masks are hard (the likelihood sees the discrete truncation). Between relaxed
    Downhills the KL has no closed form (and is ``>=`` this one): raises ``NotImplementedError``;
    use :func:`downhill_kl_mc` (Pyro's ``TraceMeanField_ELBO`` falls back to that estimate).
    Needs equal ``K`` and equal temperatures (docs/METHODS.md#ordering-kl).
    """
    if not (q.hard and p.hard):
        raise NotImplementedError(
            "KL between relaxed Downhill distributions has no closed form (it is >= the "
            "categorical KL); use downhill_kl_mc(q, p, q.rsample()) or hard=True"
        )
    if q.K != p.K:
        raise ValueError(f"KL(Downhill || Downhill) needs equal K, got {q.K} and {p.K}")
    tq, tp = broadcast_all(q.temperature, p.temperature)
    if not torch.equal(tq, tp):
        raise ValueError("KL(Downhill || Downhill) needs equal temperatures")
    return categorical_kl(q.logits, p.logits)
