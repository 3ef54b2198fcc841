"""Classification, calibration and uncertainty metrics on predicted probabilities.

All functions are pure: they take probabilities (never logits) and return Python floats (set-level
metrics) or tensors of shape ``(B,)`` (per-example uncertainties).

Shapes:
    probs: ``(B, C)`` predictive probabilities, or ``(S, B, C)`` for ``S`` Monte Carlo samples
        (stochastic forward passes). Set-level metrics first average over ``S`` to get the
        predictive distribution ``p̄ = mean_s p_s`` (the NLL is that of the MC-averaged
        probabilities: docs/METHODS.md#accuracy-nll-and-brier).
    targets: ``(B,)`` integer class indices in ``[0, C)``.

Definitions (docs/METHODS.md#metrics; Guo et al. 2017, "On Calibration of Modern Neural
Networks", eq. 3 for ECE; Nixon et al. 2019, "Measuring Calibration in Deep Learning" for adaptive
ECE; Depeweg et al. 2018 / Gal 2016 for the entropy decomposition):

* confidence ``conf_i = max_c p̄_ic``, prediction ``ŷ_i = argmax_c p̄_ic``;
* ECE ``= sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` over 15 equal-width confidence bins
  ``(lo, hi]`` (the first bin also holds confidence 0), computed once over the whole set;
* NLL ``= -mean_i log p̄_{i, y_i}``; Brier ``= mean_i sum_c (p̄_ic - onehot(y_i)_c)^2``;
* predictive entropy ``H[p̄]``, expected entropy ``mean_s H[p_s]``, mutual information
  ``H[p̄] - mean_s H[p_s]`` (natural log, nats).

Example:
    >>> probs = torch.softmax(torch.randn(8, 100, 10), -1)   # (S, B, C)
    >>> report = classification_report(probs, torch.randint(0, 10, (100,)))  # {"cls/acc": ...}
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "NLL_EPS",
    "HIGHER_IS_BETTER",
    "ReliabilityData",
    "mean_probs",
    "accuracy",
    "nll",
    "brier",
    "ece",
    "adaptive_ece",
    "mce",
    "reliability_data",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "classification_report",
]

#: Probabilities are clamped to at least this value before ``log`` in :func:`nll`, so a single
#: confidently wrong example costs at most ``-log(1e-12) ≈ 27.6`` nats instead of ``inf``.
NLL_EPS: float = 1e-12

#: Allowed deviation of a probability row sum from 1 (float32 softmax sums are accurate to ~1e-6;
#: anything further off is most likely logits passed by mistake); widened to ``C * eps`` of the
#: dtype for float16 / bfloat16 inputs.
_SUM_TOL: float = 1e-3

#: Whether a larger value is better, for every key returned by :func:`classification_report`.
HIGHER_IS_BETTER: dict[str, bool] = {
    "cls/acc": True,
    "cls/nll": False,
    "cls/brier": False,
    "cal/ece": False,
    "cal/aece": False,
    "cal/mce": False,
}


# --------------------------------------------------------------------------- validation helpers


def _check_probs(probs: Tensor, name: str = "probs") -> Tensor:
    """Validate a ``(B, C)`` or ``(S, B, C)`` probability tensor and return it as float64."""
    if not isinstance(probs, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, C) or (S, B, C)")
    if probs.ndim not in (2, 3):
        raise ValueError(
            f"{name} must have shape (B, C) or (S, B, C); got shape {tuple(probs.shape)}"
        )
    if probs.shape[-1] < 1 or probs.shape[-2] < 1 or (probs.ndim == 3 and probs.shape[0] < 1):
        raise ValueError(f"{name} must be non-empty; got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {probs.dtype}")
    # Low-precision dtypes (float16 / bfloat16) round each entry, so allow C ulps of slack.
    tol = max(_SUM_TOL, torch.finfo(probs.dtype).eps * probs.shape[-1])
    p = probs.detach().to(torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} must be finite")
    if (p < -tol).any() or (p > 1 + tol).any():
        raise ValueError(f"{name} must lie in [0, 1] (pass probabilities, not logits)")
    if ((p.sum(-1) - 1).abs() > tol).any():
        raise ValueError(f"{name} rows must sum to 1 over the last (class) dim (not logits)")
    return p.clamp(0.0, 1.0)


def _check_targets(targets: Tensor, batch: int, num_classes: int) -> Tensor:
    """Validate ``targets (B,)`` of integer class indices in ``[0, C)``."""
    if not isinstance(targets, Tensor) or targets.ndim != 1:
        raise ValueError("targets must be a 1-D tensor of shape (B,) of class indices")
    if targets.shape[0] != batch:
        raise ValueError(f"targets must have length B={batch}; got {targets.shape[0]}")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise ValueError(f"targets must be an integer (long) tensor; got dtype {targets.dtype}")
    t = targets.detach().to(device="cpu", dtype=torch.long)
    if batch and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"targets must lie in [0, C) with C={num_classes}")
    return t


def _check_n_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive int; got {n_bins!r}")


def _mean_and_targets(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    p = mean_probs(probs).cpu()
    return p, _check_targets(targets, p.shape[0], p.shape[1])


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last dim with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(-1)


# --------------------------------------------------------------------------- basic metrics


def mean_probs(probs: Tensor) -> Tensor:
    """Predictive distribution ``p̄``: average over the ``S`` Monte Carlo samples.

    Args:
        probs: ``(B, C)`` (returned as float64 unchanged) or ``(S, B, C)``.

    Returns:
        ``(B, C)`` float64 tensor ``p̄ = mean_s p_s``.

    Raises:
        ValueError: wrong ndim, non-finite values, values outside ``[0, 1]`` or rows not summing
            to 1 (e.g. logits passed by mistake).

    Example:
        >>> mean_probs(torch.full((4, 2, 3), 1 / 3)).shape
        torch.Size([2, 3])
    """
    p = _check_probs(probs)
    return p.mean(0) if p.ndim == 3 else p


def accuracy(probs: Tensor, targets: Tensor) -> float:
    """Top-1 accuracy of ``argmax_c p̄``.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long.

    Example:
        >>> accuracy(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
        0.5
    """
    p, t = _mean_and_targets(probs, targets)
    return float((p.argmax(-1) == t).double().mean())


def nll(probs: Tensor, targets: Tensor, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood ``-mean_i log max(p̄_{i, y_i}, eps)`` (nats).

    Computed from the MC-averaged probabilities ``p̄``, i.e. the log of the posterior predictive,
    not the mean of per-sample log-likelihoods (docs/METHODS.md#accuracy-nll-and-brier).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long.
        eps: lower clamp on the probability of the true class (default :data:`NLL_EPS`).

    Example:
        >>> nll(torch.tensor([[0.5, 0.5]]), torch.tensor([1]))  # log 2
        0.6931471805599453
    """
    p, t = _mean_and_targets(probs, targets)
    p_true = p.gather(1, t[:, None]).squeeze(1)
    return float(-p_true.clamp_min(eps).log().mean())


def brier(probs: Tensor, targets: Tensor) -> float:
    """Multiclass Brier score ``mean_i sum_c (p̄_ic - onehot(y_i)_c)^2`` (range ``[0, 2]``).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long.

    Example:
        >>> brier(torch.tensor([[0.5, 0.5]]), torch.tensor([0]))  # 0.25 + 0.25
        0.5
    """
    p, t = _mean_and_targets(probs, targets)
    onehot = torch.nn.functional.one_hot(t, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(-1).mean())


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityData:
    """Per-bin statistics of a reliability diagram (equal-width confidence bins).

    Attributes:
        edges: ``(M + 1,)`` bin edges ``0 = e_0 < ... < e_M = 1``; bin ``m`` is ``(e_m, e_{m+1}]``
            and bin 0 also holds confidence exactly 0.
        counts: ``(M,)`` number of examples per bin (long).
        confidence: ``(M,)`` mean confidence per bin (NaN for empty bins).
        accuracy: ``(M,)`` accuracy per bin (NaN for empty bins).

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
        >>> data = reliability_data(probs, torch.tensor([0, 1, 1]), n_bins=15)
        >>> data.counts.sum().item(), round(data.ece, 4)  # ece(): (2 |0.5 - 0.9| + |1 - 0.7|) / 3
        (3, 0.3667)
    """

    edges: Tensor
    counts: Tensor
    confidence: Tensor
    accuracy: Tensor

    @property
    def n_bins(self) -> int:
        """Number of bins ``M``."""
        return int(self.counts.numel())

    @property
    def gaps(self) -> Tensor:
        """``(M,)`` ``|acc(B_m) - conf(B_m)|`` (NaN for empty bins)."""
        return (self.accuracy - self.confidence).abs()

    @property
    def ece(self) -> float:
        """``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`` over non-empty bins."""
        nonempty = self.counts > 0
        weights = self.counts[nonempty].double() / self.counts.sum()
        return float((weights * self.gaps[nonempty]).sum())

    @property
    def mce(self) -> float:
        """``max_m |acc(B_m) - conf(B_m)|`` over non-empty bins."""
        return float(self.gaps[self.counts > 0].max())


def _confidence_and_correct(probs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    p, t = _mean_and_targets(probs, targets)
    conf, pred = p.max(-1)
    return conf, (pred == t).double()


def reliability_data(probs: Tensor, targets: Tensor, n_bins: int = 15) -> ReliabilityData:
    """Bin the whole set by confidence into ``n_bins`` equal-width bins ``(lo, hi]``.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` (MC-averaged first); targets: ``(B,)`` long.
        n_bins: number of equal-width bins on ``[0, 1]`` (15 as in Guo et al. 2017).

    Returns:
        :class:`ReliabilityData` with per-bin counts, mean confidence and accuracy.

    Raises:
        ValueError: bad shapes, non-probabilities, or ``n_bins < 1``.

    Example:
        >>> data = reliability_data(torch.softmax(torch.randn(100, 10), -1), torch.randint(0, 10, (100,)))
        >>> data.counts.sum()
        tensor(100)
    """
    _check_n_bins(n_bins)
    conf, correct = _confidence_and_correct(probs, targets)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # right=False: index i with edges[i-1] < x <= edges[i], so bins are (lo, hi]; confidence 0
    # gets index 0 and is moved into the first bin by the clamp.
    idx = (torch.bucketize(conf, edges, right=False) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    denom = counts.double()
    nan = torch.full_like(denom, float("nan"))
    confidence = torch.where(counts > 0, conf_sum / denom.clamp_min(1), nan)
    acc = torch.where(counts > 0, acc_sum / denom.clamp_min(1), nan)
    return ReliabilityData(edges=edges, counts=counts, confidence=confidence, accuracy=acc)


def ece(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with equal-width bins over the whole set (Guo et al. 2017, eq. 3).

    ``ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``, bins ``(lo, hi]`` (first bin includes 0).
    Computed once over all ``N`` examples, not averaged over batches
    (docs/METHODS.md#expected-calibration-error).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long; n_bins: number of bins.

    Example:
        >>> round(ece(torch.tensor([[0.9, 0.1], [0.9, 0.1]]), torch.tensor([0, 1])), 4)
        0.4
    """
    return reliability_data(probs, targets, n_bins).ece


def mce(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Maximum calibration error ``max_m |acc(B_m) - conf(B_m)|`` over non-empty equal-width bins.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long; n_bins: number of bins.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7]])
        >>> round(mce(probs, torch.tensor([0, 1, 1]), n_bins=15), 4)  # the 0.9 bin: |0.5 - 0.9|
        0.4
    """
    return reliability_data(probs, targets, n_bins).mce


def adaptive_ece(probs: Tensor, targets: Tensor, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) ECE (Nixon et al. 2019).

    Examples are sorted by confidence and split into ``n_bins`` consecutive groups whose sizes
    differ by at most one (``torch.tensor_split``); then ``sum_m |B_m| / N |acc - conf|``.
    With ``N < n_bins`` only ``N`` non-empty groups exist.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long; n_bins: number of groups.

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
        >>> round(adaptive_ece(probs, torch.tensor([0, 1, 1, 1]), n_bins=2), 4)
        0.15
    """
    _check_n_bins(n_bins)
    conf, correct = _confidence_and_correct(probs, targets)
    order = torch.argsort(conf, stable=True)
    n = conf.numel()
    total = torch.zeros((), dtype=torch.float64)
    for chunk in torch.tensor_split(order, n_bins):
        if chunk.numel() == 0:
            continue
        gap = (correct[chunk].mean() - conf[chunk].mean()).abs()
        total = total + chunk.numel() / n * gap
    return float(total)


# --------------------------------------------------------------------------- uncertainty


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy of the predictive distribution ``H[p̄] = -sum_c p̄_c log p̄_c`` (nats).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` (MC-averaged first).

    Returns:
        ``(B,)`` float64 tensor, in ``[0, log C]``.

    Example:
        >>> predictive_entropy(torch.tensor([[0.5, 0.5]]))  # log 2
        tensor([0.6931], dtype=torch.float64)
    """
    return _entropy(mean_probs(probs))


def _check_samples(probs: Tensor) -> Tensor:
    if isinstance(probs, Tensor) and probs.ndim != 3:
        raise ValueError(
            "probs must have shape (S, B, C) with S Monte Carlo samples (use probs[None] for a "
            f"single deterministic pass); got shape {tuple(probs.shape)}"
        )
    return _check_probs(probs)


def expected_entropy(probs: Tensor) -> Tensor:
    """Expected entropy ``mean_s H[p_s]`` (aleatoric part of the decomposition, nats).

    Args:
        probs: ``(S, B, C)``; a ``(B, C)`` input raises (pass ``probs[None]`` for ``S = 1``).

    Returns:
        ``(B,)`` float64 tensor.

    Example:
        >>> expected_entropy(torch.softmax(torch.randn(8, 5, 3), -1)).shape
        torch.Size([5])
    """
    return _entropy(_check_samples(probs)).mean(0)


def mutual_information(probs: Tensor) -> Tensor:
    """Mutual information between prediction and weights: ``H[p̄] - mean_s H[p_s]`` (nats).

    Jensen's inequality (entropy is concave) makes this ``>= 0``; floating-point cancellation can
    give values like ``-1e-16``, which are clamped to 0. With ``S = 1`` it is exactly 0.

    Args:
        probs: ``(S, B, C)``; a ``(B, C)`` input raises (pass ``probs[None]`` for ``S = 1``).

    Returns:
        ``(B,)`` float64 tensor, ``>= 0``.

    Example:
        >>> mi = mutual_information(torch.softmax(torch.randn(8, 5, 3), -1))  # (5,)
    """
    p = _check_samples(probs)
    return (_entropy(p.mean(0)) - _entropy(p).mean(0)).clamp_min(0.0)


# --------------------------------------------------------------------------- report


def classification_report(probs: Tensor, targets: Tensor, n_bins: int = 15) -> dict[str, float]:
    """All set-level classification and calibration metrics under namespaced keys.

    Keys: ``cls/acc``, ``cls/nll``, ``cls/brier``, ``cal/ece``, ``cal/aece``, ``cal/mce``; see
    :data:`HIGHER_IS_BETTER` for their direction.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)``; targets: ``(B,)`` long; n_bins: calibration bins.

    Example:
        >>> report = classification_report(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
        >>> sorted(report), round(report["cal/ece"], 4)
        (['cal/aece', 'cal/ece', 'cal/mce', 'cls/acc', 'cls/brier', 'cls/nll'], 0.1)
    """
    data = reliability_data(probs, targets, n_bins)
    return {
        "cls/acc": accuracy(probs, targets),
        "cls/nll": nll(probs, targets),
        "cls/brier": brier(probs, targets),
        "cal/ece": data.ece,
        "cal/aece": adaptive_ece(probs, targets, n_bins),
        "cal/mce": data.mce,
    }
