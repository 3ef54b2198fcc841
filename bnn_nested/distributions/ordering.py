"""Distributions over the truncation index ``b in {0..K}`` of an ordered layer
(docs/METHODS.md#variational-ordering-units).

Everything here uses one convention: a *truncation logits* tensor of shape ``(..., K + 1)`` holds
log-probabilities (up to an additive constant) of ``b = 0..K``, where ``b`` is the number of ordered
groups kept. The same tensor parameterises :class:`~bnn_nested.distributions.Downhill`.

Example:
    >>> logits = stick_breaking_logits(torch.full((4,), 3.0))   # q(b), K = 4
    >>> keep = keep_probs_from_logits(logits)                    # P(b >= k), k = 1..4
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Reference initialisation of the continuation logits ``r`` (Cui et al. 2021 code: 3.0).
DEFAULT_INIT = 3.0
#: Reference prior continuation probability ``pi`` of the truncated geometric prior.
DEFAULT_PRIOR_PI = 0.95
#: Continuation logits are clipped to this range (reference code).
LOGIT_CLIP = 5.0


def stick_breaking_logits(r: torch.Tensor) -> torch.Tensor:
    """Stick-breaking ordering posterior: continuation logits -> ``log q(b)``.

    With ``beta_j = sigmoid(r_j)``, ``q(b) = (prod_{j<=b} beta_j) (1 - beta_{b+1})`` for ``b < K`` and
    ``q(K) = prod_{j<=K} beta_j`` (Cui et al., CVPR 2021). Computed in log space.

    Args:
        r: continuation logits of shape ``(..., K)``.

    Returns:
        normalised log-probabilities of shape ``(..., K + 1)``.
    """
    log_beta = F.logsigmoid(r)
    log_stop = F.logsigmoid(-r)
    zeros = torch.zeros_like(r[..., :1])
    cum = torch.cat([zeros, torch.cumsum(log_beta, dim=-1)], dim=-1)  # log prod_{j<=b} beta_j
    stop = torch.cat([log_stop, zeros], dim=-1)  # log(1 - beta_{b+1}); 0 for b = K
    return cum + stop


def truncated_geometric_logits(pi: float, K: int, dtype=None, device=None) -> torch.Tensor:
    """Prior of nested dropout (Rippel et al. 2014): stick-breaking with constant ``beta_j = pi``.

    ``p(b) = pi^b (1 - pi)`` for ``b < K`` and ``p(K) = pi^K``. Returns shape ``(K + 1,)``.
    """
    if not 0.0 < pi < 1.0:
        raise ValueError(f"prior_pi must be in (0, 1), got {pi}")
    r = torch.full((K,), math.log(pi) - math.log1p(-pi), dtype=dtype, device=device)
    return stick_breaking_logits(r)


def uniform_logits(K: int, dtype=None, device=None) -> torch.Tensor:
    """Uniform distribution over ``b in {0..K}``: shape ``(K + 1,)``, normalised."""
    return torch.full((K + 1,), -math.log(K + 1), dtype=dtype, device=device)


def keep_probs_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Keep probability of each ordered group, ``P(b >= k)`` for ``k = 1..K``.

    Args:
        logits: truncation logits ``(..., K + 1)``.

    Returns:
        ``(..., K)``, non-increasing in ``k``.
    """
    p = torch.softmax(logits, dim=-1)[..., 1:]
    return torch.flip(torch.cumsum(torch.flip(p, [-1]), -1), [-1])


def categorical_kl(logits_q: torch.Tensor, logits_p: torch.Tensor) -> torch.Tensor:
    """Analytic ``KL(q(b) || p(b))`` between two truncation categoricals, summed over the last dim."""
    lq = torch.log_softmax(logits_q, dim=-1)
    lp = torch.log_softmax(logits_p, dim=-1)
    return (lq.exp() * (lq - lp)).sum(-1)
