"""Variational ordering unit (VOU): a layer's learned distribution over how many groups it keeps."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from bnn_nested.distributions import (
    DEFAULT_INIT,
    DEFAULT_PRIOR_PI,
    LOGIT_CLIP,
    Downhill,
    categorical_kl,
    concrete_log_ratio,
    downhill_rsample,
    keep_probs_from_logits,
    stick_breaking_logits,
    truncated_geometric_logits,
    uniform_logits,
)

PriorKind = Literal["geometric", "uniform"]
PRIOR_KINDS: tuple[str, ...] = ("geometric", "uniform")
#: How the continuation logits ``r`` learn (docs/METHODS.md#ordering-kl): the gradient of the
#: expected loss through the relaxed Downhill sample (straight-through) or by the score function,
#: both followed by the optimiser; or ``"coordinate"``: no gradient, ``q(b)`` is set to its optimum
#: given the loss measured at each truncation (:mod:`bnn_nested.training.coordinate`).
GRADIENTS: tuple[str, ...] = ("straight_through", "score", "coordinate")
#: ``"coordinate"``: the passes draw ``b`` from ``PROPOSAL_MIX * q(b) + (1 - PROPOSAL_MIX) *
#: uniform``, so every width keeps training (no width is starved once ``q`` leaves it).
PROPOSAL_MIX = 0.5
#: ``"coordinate"``: range of the continuation logits (not the optimiser's [-5, 5]: the closed-form
#: optimum may need continuation probabilities beyond sigmoid(5) = 0.9933)
COORDINATE_LOGIT_CLIP = 30.0


def ordering_log_q(model: nn.Module) -> torch.Tensor | None:
    """Sum of ``log q(b)`` over the ordering units of ``model`` that drew a score-function mask in
    the last forward pass (consumed), or ``None`` when none did."""
    parts = [
        lq
        for m in model.modules()
        if isinstance(m, OrderingUnit)
        for lq in [m.consume_log_q()]
        if lq is not None
    ]
    return torch.stack(parts).sum(0) if parts else None


def prior_logits(kind: str, K: int, pi: float = DEFAULT_PRIOR_PI) -> torch.Tensor:
    """Truncation logits ``(K + 1,)`` of the ordering prior ``p(b)``."""
    if kind == "geometric":
        return truncated_geometric_logits(pi, K)
    if kind == "uniform":
        return uniform_logits(K)
    raise ValueError(f"prior must be one of {PRIOR_KINDS}, got {kind!r}")


def continuation_logits_matching(logits: torch.Tensor) -> torch.Tensor:
    """Inverse of the stick-breaking map: continuation logits ``r`` with ``q(b) = softmax(logits)``.

    ``beta_k = P(b >= k) / P(b >= k - 1)``, ``r_k = logit(beta_k)``. Shape ``(K + 1,) -> (K,)``.
    """
    keep = keep_probs_from_logits(logits)
    prev = torch.cat([torch.ones_like(keep[..., :1]), keep[..., :-1]], dim=-1)
    beta = (keep / prev).clamp(1e-6, 1 - 1e-6)
    return torch.log(beta) - torch.log1p(-beta)


def group_size(channels: int, groups: int) -> int:
    """Channels per group; ``groups`` must divide ``channels``."""
    if groups < 1 or channels % groups != 0:
        raise ValueError(
            f"groups must be >= 1 and divide the channel count {channels}, got {groups}"
        )
    return channels // groups


def active_groups(width: float, groups: int, kept: int) -> int:
    """Groups kept at global width ``r in (0, 1]``: ``F + ceil(r * K)`` with ``K = G - F``."""
    if not 0.0 < width <= 1.0:
        raise ValueError(f"width must be in (0, 1], got {width}")
    K = groups - kept
    return kept + min(K, math.ceil(width * K - 1e-9))


class OrderingUnit(nn.Module):
    r"""Variational ordering unit of one channel dimension (Cui et al., *Bayesian Nested Neural
    Networks*, 2021).

    The dimension's ``channels`` are split into ``groups`` contiguous groups; the first ``kept``
    are always kept, the other ``K = groups - kept`` are ordered. The unit holds the continuation
    logits ``r`` of the stick-breaking posterior ``q(b)`` and the prior ``p(b)``. In training (when
    masking is enabled) a nested model multiplies the inputs of the layers consuming the dimension
    by a Downhill mask (:meth:`sample_mask`), resampled each forward pass (one per mini-batch, or
    one per example with ``per_example=True``); otherwise it leaves them whole (or scales them by
    the keep probabilities with ``keep_scaling=True``). The mask acts after the producer's
    normalisation and activation, so a hard mask computes exactly the sliced network.

    Args:
        channels: number of channels of the dimension (a nestified model's units have one channel
            per group).
        groups: number of groups ``G`` (divides ``channels``).
        kept: always-kept leading groups ``F`` (``0 <= F < G``).
        temperature: Downhill temperature ``tau > 0`` (a buffer, changed by schedules).
        prior: ``"geometric"`` (truncated geometric with ``prior_pi``) or ``"uniform"``.
        init: initial continuation logit in ``[-5, 5]`` (reference 3.0), or ``"prior"`` to start at
            the prior (a learned posterior is clipped to ``[-5, 5]``, so a prior with
            ``pi > sigmoid(5) = 0.9933`` starts at the clip; a fixed one is used exactly).
        learn: if ``False`` the posterior stays fixed (nested dropout) and ``kl()`` is 0.
        hard: straight-through 0/1 masks instead of relaxed ones. Decides the KL (:meth:`kl`).

    Learned continuation logits stay in ``[-5, 5]`` (the reference's range) by projection after
    each optimiser step (:meth:`project_`), not by clipping in the forward pass, whose gradient would
    be 0 outside the range.

    Example:
        >>> ou = OrderingUnit(channels=64, groups=16, kept=2).train()
        >>> m = ou.sample_mask()                  # one Downhill mask per channel
        >>> m.shape, bool((m[:8] == 1).all())      # kept groups always kept
        (torch.Size([64]), True)
        >>> ou.draws_mask(training=False)          # no mask in eval
        False
    """

    def __init__(
        self,
        channels: int,
        groups: int,
        kept: int = 0,
        temperature: float = 1.0,
        prior: PriorKind = "geometric",
        prior_pi: float = DEFAULT_PRIOR_PI,
        init: float | Literal["prior"] = DEFAULT_INIT,
        learn: bool = True,
        hard: bool = False,
        per_example: bool = False,
        keep_scaling: bool = False,
        gradient: str = "straight_through",
    ) -> None:
        super().__init__()
        self.channels = channels
        self.groups = groups
        self.group_size = group_size(channels, groups)
        if not 0 <= kept < groups:
            raise ValueError(f"kept must be in [0, groups) = [0, {groups}), got {kept}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.kept = kept
        self.K = groups - kept
        self.register_buffer("prior_logits", prior_logits(prior, self.K, prior_pi))
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        if init == "prior":
            r0 = continuation_logits_matching(self.prior_logits)
        else:
            if not -LOGIT_CLIP <= float(init) <= LOGIT_CLIP:
                raise ValueError(
                    f"init must be in [-{LOGIT_CLIP}, {LOGIT_CLIP}] or 'prior', got {init!r}"
                )
            r0 = torch.full((self.K,), float(init))
        self.learn = learn
        if learn:
            self.r = nn.Parameter(r0.clamp(-LOGIT_CLIP, LOGIT_CLIP))
        else:
            self.register_buffer("r", r0)
        self.prior_kind = prior
        self.hard = hard
        self.per_example = per_example
        self.keep_scaling = keep_scaling
        if gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
        if gradient in ("score", "coordinate") and not (hard and learn):
            raise ValueError(f"gradient: {gradient!r} needs hard masks and a learned ordering")
        self.gradient = gradient
        if gradient == "coordinate":  # set by coordinate ascent, not by the optimiser
            self.r.requires_grad_(False)
            # the data term at every truncation b, measured at the last update (NaN: not yet)
            self.register_buffer(
                "loss_curve", torch.full((self.K + 1,), float("nan"), dtype=torch.float64)
            )
        self.forced: int | None = None  # a truncation b every forward pass uses (loss curves)
        self._keep_leaf: torch.Tensor | None = None  # coordinate: keep probs to differentiate
        self._log_q: torch.Tensor | None = None  # log q(b) of the last score-function sample
        self.masking = True  # draw Downhill masks in training (NestedModel.masking toggles it)
        self._last_sample: torch.Tensor | None = None  # the mask of the last forward (for kl())

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, groups={self.groups}, kept={self.kept}, "
            f"prior={self.prior_kind}, learn={self.learn}, hard={self.hard}"
        )

    def logits(self) -> torch.Tensor:
        """Posterior truncation logits ``log q(b)``, shape ``(K + 1,)``."""
        return stick_breaking_logits(self.r)

    @torch.no_grad()
    def project_(self) -> None:
        """Put learned continuation logits back into ``[-5, 5]`` (call after an optimiser step)."""
        if self.learn and self.gradient != "coordinate":  # coordinate: set_logits_ bounds r
            self.r.clamp_(-LOGIT_CLIP, LOGIT_CLIP)

    def posterior(self) -> Downhill:
        return Downhill(self.logits(), self.temperature, hard=self.hard)

    def prior(self) -> Downhill:
        return Downhill(self.prior_logits, self.temperature, hard=self.hard)

    def kl(self) -> torch.Tensor:
        """The ordering term of the negative ELBO; 0 when the ordering is not learned.

        * hard masks: ``KL(q(b) || p(b))`` between the truncation categoricals, exact (the
          likelihood sees the discrete truncation);
        * relaxed masks: the Monte-Carlo estimate ``log q(m) - log p(m)`` on the mask the last
          forward pass sampled (averaged over per-example masks; Maddison et al. 2017, §C), an
          unbiased estimate of the relaxed KL, which has no closed form and is ``>=`` the
          categorical KL. The sample is consumed (and dropped by ``train()``/``eval()``); without
          one (no forward pass with gradients in training since the last call) a fresh mask is
          drawn. Call ``kl()`` after the forward pass and before ``backward()`` of the same step.

        See docs/METHODS.md#ordering-kl.
        """
        m, self._last_sample = self._last_sample, None
        if not self.learn:
            return self.r.new_zeros(())
        logits = self.logits()
        if self.hard:
            # == kl_divergence(self.posterior(), self.prior()), without two distribution objects
            return categorical_kl(logits, self.prior_logits)
        if m is None or getattr(m, "_log_simplex", None) is None:
            m = downhill_rsample(logits, self.temperature)
        ratio = concrete_log_ratio(logits, self.prior_logits, m._log_simplex, self.temperature)
        return ratio.mean()

    def channel_keep(self, keep: str | float = "posterior") -> torch.Tensor | None:
        """Per-channel weights of the weight KL, ``(channels,)``, by what the training uses:

        ``"posterior"``: the keep probabilities ``P(c kept)`` (masked training: ``vou``,
        ``nested_dropout``); ``"all"``: ``None``, every channel counts fully (``sandwich``, which
        always trains the full width too); a width ``r``: 1 for the channels kept at ``r`` and 0
        beyond (``fixed``: the channels beyond never enter the likelihood, their posterior is the
        prior).
        """
        if keep == "posterior":
            if self.gradient == "coordinate":  # the passes' distribution: the proposal's
                leaf = self._keep_leaf
                return self.expand_groups(leaf if leaf is not None else self.proposal_keep_probs())
            return self.channel_keep_probs()
        if keep == "all":
            return None
        n = active_groups(float(keep), self.groups, self.kept) - self.kept
        ordered = (torch.arange(self.K, device=self.r.device) < n).to(self.r.dtype)
        return self.expand_groups(ordered)

    def keep_probs(self) -> torch.Tensor:
        """``P(b >= k)`` for the ``K`` ordered groups."""
        return keep_probs_from_logits(self.logits())

    def proposal_log_probs(self) -> torch.Tensor:
        """``log pi(b)`` ``(K + 1,)`` of the passes' proposal (``gradient="coordinate"``):
        ``PROPOSAL_MIX * q(b) + (1 - PROPOSAL_MIX) / (K + 1)``, no gradient."""
        q = torch.softmax(self.logits().detach(), -1)
        return torch.log(PROPOSAL_MIX * q + (1 - PROPOSAL_MIX) / (self.K + 1))

    def proposal_keep_probs(self) -> torch.Tensor:
        """``P_pi(b >= k)`` for the ``K`` ordered groups under the proposal (no gradient)."""
        k = torch.arange(1, self.K + 1, device=self.r.device, dtype=self.r.dtype)
        uniform = (self.K + 1 - k) / (self.K + 1)
        return PROPOSAL_MIX * self.keep_probs().detach() + (1 - PROPOSAL_MIX) * uniform

    @torch.no_grad()
    def set_logits_(self, logits: torch.Tensor) -> None:
        """Set ``q(b) = softmax(logits)`` (``(K + 1,)``), within the continuation logits' range.

        In log space: ``r_k = logit(P(b >= k) / P(b >= k - 1)) = logsumexp(logits[k:]) -
        logits[k - 1]`` (finite where ``q`` is nearly one-hot, unlike a ratio of probabilities)."""
        tail = torch.logcumsumexp(logits.flip(0), 0).flip(0)  # log P(b >= k), k = 0..K
        r = tail[1:] - logits[:-1]
        self.r.copy_(r.to(self.r).clamp(-COORDINATE_LOGIT_CLIP, COORDINATE_LOGIT_CLIP))

    def expected_groups(self) -> float:
        """Expected number of groups kept, ``F + E[b] = F + sum_k P(b >= k)``."""
        with torch.no_grad():
            return self.kept + float(self.keep_probs().sum())

    def expand_groups(self, group_values: torch.Tensor) -> torch.Tensor:
        """Per-ordered-group values ``(..., K)`` -> per-channel ``(..., channels)``; kept -> 1."""
        ones = group_values.new_ones(group_values.shape[:-1] + (self.kept,))
        return torch.cat([ones, group_values], -1).repeat_interleave(self.group_size, dim=-1)

    def channel_keep_probs(self) -> torch.Tensor:
        """Keep probability of every channel, shape ``(channels,)``."""
        return self.expand_groups(self.keep_probs())

    def sample_mask(self, batch: int | None = None) -> torch.Tensor:
        """A per-channel mask ``(channels,)``, or ``(batch, channels)`` when given a batch size."""
        coordinate = self.gradient == "coordinate" and torch.is_grad_enabled()
        if self.forced is not None or coordinate:
            # a fixed truncation (coordinate.loss_curves), or b ~ pi, the proposal (exact, no
            # gradient)
            b = self.forced
            if b is None:
                b = int(torch.distributions.Categorical(logits=self.proposal_log_probs()).sample())
            m = self.truncation_mask(b)
            return self.expand_groups(m.expand(batch, -1) if batch is not None else m)
        logits = self.logits()
        if batch is not None:
            logits = logits.expand(batch, -1)
        if self.gradient == "score" and torch.is_grad_enabled():
            # an exact draw b ~ q(b) (Gumbel-max), no gradient through the mask; the gradient of
            # the expected loss in r comes from log q(b) (the objective's score-function term)
            m = downhill_rsample(logits.detach(), self.temperature, hard=True).detach()
            b = m.sum(-1, keepdim=True).round().long()
            self._log_q = logits.gather(-1, b).squeeze(-1)
            return self.expand_groups(m)
        m = downhill_rsample(logits, self.temperature, self.hard)  # == self.posterior().rsample()
        if self.learn and not self.hard and torch.is_grad_enabled():
            self._last_sample = m  # for kl(): the relaxed term is estimated at this mask
        return self.expand_groups(m)

    def consume_log_q(self) -> torch.Tensor | None:
        """``log q(b)`` of the mask the last forward pass drew with ``gradient="score"`` (then
        forgotten), differentiable in ``r``; ``None`` if no such mask was drawn."""
        out, self._log_q = self._log_q, None
        return out

    def draws_mask(self, training: bool) -> bool:
        """Whether a forward pass masks with :meth:`sample_mask`: in training while masking, or
        at a forced truncation."""
        return (training and self.masking) or self.forced is not None

    def truncation_mask(self, b: int) -> torch.Tensor:
        """The hard mask ``(K,)`` of the ordered groups at truncation ``b`` (the first ``b`` kept)."""
        return (torch.arange(self.K, device=self.r.device) < b).to(self.r.dtype)

    def train(self, mode: bool = True) -> OrderingUnit:
        self._last_sample = None  # a sample belongs to the training step that drew it
        self._log_q = None
        return super().train(mode)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_last_sample"] = None  # a non-leaf tensor: not copied, pickled or deep-copied
        state["_log_q"] = None
        state["_keep_leaf"] = None
        return state
