"""Out-of-distribution (OOD) scores and detection metrics.

Convention, used by every function here: **a higher score means more likely OOD, and OOD is the
positive class** (as in pytorch-ood). Scores that are naturally "higher = more in-distribution"
(maximum softmax probability, maximum logit, log-sum-exp) are negated.

Scores (Hendrycks & Gimpel 2017 for MSP; Hendrycks et al. 2022 for max logit; Liu et al. 2020,
"Energy-based Out-of-distribution Detection", eq. 5 for the energy; Gal 2016 / Depeweg et al.
2018 for the entropy decomposition):

==================== ============ ====================================================
name                 input        score (higher = more OOD)
==================== ============ ====================================================
``msp``              probs        ``-max_c p̄_c``
``max_logit``        logits       ``-max_c z_c`` (averaged over ``S``)
``energy``           logits       ``E = -T logsumexp(z / T)`` (averaged over ``S``)
``entropy``          probs        ``H[p̄]``
``mutual_information`` probs (S)  ``H[p̄] - mean_s H[p_s]``
``expected_entropy`` probs (S)    ``mean_s H[p_s]``
==================== ============ ====================================================

Metrics (scikit-learn): AUROC, AUPR-Out (OOD positive), AUPR-In (in-distribution positive,
scores negated), FPR95 (false-positive rate on in-distribution at the first threshold that
detects 95% of OOD inputs).

Example::

    s_in, s_out = msp_score(probs_test), msp_score(probs_noise)      # (B_in,), (B_out,)
    ood_metrics(s_in, s_out)  # {"ood/auroc": ..., "ood/fpr95": ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from bnn_nested.config import OOD_SCORES
from bnn_nested.evaluation.metrics import (
    expected_entropy,
    mean_probs,
    mutual_information,
    predictive_entropy,
)
from bnn_nested.registry import Registry

__all__ = [
    "OODScore",
    "SCORES",
    "SCORE_INPUTS",
    "HIGHER_IS_BETTER",
    "TPR_LEVEL",
    "msp_score",
    "max_logit_score",
    "energy_score",
    "entropy_score",
    "mutual_information_score",
    "expected_entropy_score",
    "compute_score",
    "ood_metrics",
]

OODScore = Literal[
    "msp", "max_logit", "energy", "entropy", "mutual_information", "expected_entropy"
]

#: True-positive rate (fraction of OOD inputs detected) at which ``ood/fpr95`` is read off.
TPR_LEVEL: float = 0.95

#: Whether a larger value is better, for every key returned by :func:`ood_metrics`.
HIGHER_IS_BETTER: dict[str, bool] = {
    "ood/auroc": True,
    "ood/aupr_in": True,
    "ood/aupr_out": True,
    "ood/fpr95": False,
}


def _check_logits(logits: Tensor) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim not in (2, 3):
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits must be a tensor of shape (B, C) or (S, B, C); got {shape}")
    if not logits.is_floating_point() or logits.numel() == 0:
        raise ValueError("logits must be a non-empty floating-point tensor")
    z = logits.detach().to(torch.float64)
    if not torch.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z if z.ndim == 3 else z[None]


# --------------------------------------------------------------------------- scores


def msp_score(probs: Tensor) -> Tensor:
    """Negative maximum softmax probability ``-max_c p̄_c``; higher score = more likely OOD.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities (MC-averaged first).

    Returns:
        ``(B,)`` float64 scores in ``[-1, -1/C]``.

    Example:
        >>> msp_score(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))  # second is more OOD
        tensor([-0.9000, -0.5000], dtype=torch.float64)
    """
    return -mean_probs(probs).max(-1).values


def max_logit_score(logits: Tensor) -> Tensor:
    """Negative maximum logit ``-max_c z_c``; higher score = more likely OOD.

    Args:
        logits: ``(B, C)`` or ``(S, B, C)``; for ``S`` samples the per-sample scores are averaged.

    Returns:
        ``(B,)`` float64 scores.

    Example:
        >>> max_logit_score(torch.tensor([[5.0, 0.0], [1.0, 0.0]]))
        tensor([-5., -1.], dtype=torch.float64)
    """
    return -_check_logits(logits).max(-1).values.mean(0)


def energy_score(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Free energy ``E(x) = -T logsumexp(z / T)`` (Liu et al. 2020, eq. 5); higher = more OOD.

    In-distribution inputs have large logits, hence low energy, so the energy itself already
    follows the "higher = more OOD" convention.

    Args:
        logits: ``(B, C)`` or ``(S, B, C)``; for ``S`` samples the per-sample energies are averaged.
        temperature: ``T > 0`` (1 in Liu et al.).

    Returns:
        ``(B,)`` float64 scores.

    Example:
        >>> energy_score(torch.zeros(1, 2))  # -log 2
        tensor([-0.6931], dtype=torch.float64)
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature!r}")
    z = _check_logits(logits)
    return (-temperature * torch.logsumexp(z / temperature, dim=-1)).mean(0)


def entropy_score(probs: Tensor) -> Tensor:
    """Predictive entropy ``H[p̄]`` (nats); higher score = more likely OOD.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities (MC-averaged first).

    Returns:
        ``(B,)`` float64 scores in ``[0, log C]``.

    Example:
        >>> entropy_score(torch.tensor([[0.5, 0.5]]))
        tensor([0.6931], dtype=torch.float64)
    """
    return predictive_entropy(probs)


def mutual_information_score(probs: Tensor) -> Tensor:
    """Mutual information ``H[p̄] - mean_s H[p_s]`` (epistemic); higher score = more likely OOD.

    Args:
        probs: ``(S, B, C)`` Monte Carlo probabilities; ``(B, C)`` raises ``ValueError``.

    Returns:
        ``(B,)`` float64 scores ``>= 0``.

    Example:
        >>> mutual_information_score(torch.softmax(torch.randn(8, 5, 3), -1)).shape
        torch.Size([5])
    """
    return mutual_information(probs)


def expected_entropy_score(probs: Tensor) -> Tensor:
    """Expected entropy ``mean_s H[p_s]`` (aleatoric); higher score = more likely OOD.

    Args:
        probs: ``(S, B, C)`` Monte Carlo probabilities; ``(B, C)`` raises ``ValueError``.

    Returns:
        ``(B,)`` float64 scores ``>= 0``.

    Example:
        >>> expected_entropy_score(torch.softmax(torch.randn(8, 5, 3), -1)).shape
        torch.Size([5])
    """
    return expected_entropy(probs)


#: Score name -> function; every function returns ``(B,)`` scores, higher = more likely OOD.
SCORES: Registry[Callable[[Tensor], Tensor]] = Registry("OOD score", field="--scores")
for _name, _fn in (
    ("msp", msp_score),
    ("max_logit", max_logit_score),
    ("energy", energy_score),
    ("entropy", entropy_score),
    ("mutual_information", mutual_information_score),
    ("expected_entropy", expected_entropy_score),
):
    SCORES.register(_name, _fn)

#: Score name -> which tensor its function takes (``"probs"`` or ``"logits"``).
SCORE_INPUTS: dict[str, Literal["probs", "logits"]] = {
    "msp": "probs",
    "max_logit": "logits",
    "energy": "logits",
    "entropy": "probs",
    "mutual_information": "probs",
    "expected_entropy": "probs",
}

assert tuple(SCORES) == OOD_SCORES and set(SCORES) == set(get_args(OODScore)) == set(SCORE_INPUTS)


def compute_score(
    name: OODScore, *, probs: Tensor | None = None, logits: Tensor | None = None
) -> Tensor:
    """Compute a named OOD score (higher = more likely OOD; OOD is the positive class).

    Probability-based scores use ``probs`` if given, else ``softmax(logits)``; logit-based scores
    need ``logits``.

    Args:
        name: one of :data:`OODScore`.
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities.
        logits: ``(B, C)`` or ``(S, B, C)`` logits.

    Returns:
        ``(B,)`` float64 scores.

    Raises:
        ValueError: unknown ``name`` or the needed input missing.

    Example:
        >>> logits = torch.zeros(5, 3)
        >>> compute_score("energy", logits=logits).shape  # (B,)
        torch.Size([5])
        >>> probs = torch.softmax(torch.randn(8, 5, 3), -1)  # (S, B, C)
        >>> compute_score("mutual_information", probs=probs).shape
        torch.Size([5])
    """
    fn = SCORES[name]  # unknown names: one line listing the accepted ones
    if SCORE_INPUTS[name] == "logits":
        if logits is None:
            raise ValueError(f"score {name!r} needs logits; got logits=None")
        return fn(logits)
    if probs is None:
        if logits is None:
            raise ValueError(f"score {name!r} needs probs or logits; got neither")
        probs = torch.softmax(logits.detach().to(torch.float64), dim=-1)
    return fn(probs)


# --------------------------------------------------------------------------- metrics


def _as_scores(x: Tensor | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of scores; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def ood_metrics(
    scores_in: Tensor | np.ndarray, scores_out: Tensor | np.ndarray
) -> dict[str, float]:
    """Detection metrics for scores where higher = more likely OOD and OOD is the positive class.

    * ``ood/auroc``: ``roc_auc_score(is_ood, score)``;
    * ``ood/aupr_out``: ``average_precision_score(is_ood, score)`` (OOD positive);
    * ``ood/aupr_in``: ``average_precision_score(1 - is_ood, -score)`` (in-distribution positive);
    * ``ood/fpr95``: fraction of in-distribution inputs flagged (``score >= t``) at the largest
      threshold ``t`` that flags at least :data:`TPR_LEVEL` = 95% of OOD inputs.

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs.
        scores_out: ``(N_out,)`` scores of OOD inputs.

    Returns:
        dict with the four keys above (see :data:`HIGHER_IS_BETTER`).

    Raises:
        ValueError: empty, non-1-D or non-finite scores.

    Example:
        >>> ood_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0.8, 0.9]))["ood/auroc"]
        1.0
    """
    from sklearn.metrics import (  # deferred: heavy (sklearn), only this path needs it
        average_precision_score,
        roc_auc_score,
        roc_curve,
    )

    s_in, s_out = _as_scores(scores_in, "scores_in"), _as_scores(scores_out, "scores_out")
    scores = np.concatenate([s_in, s_out])
    is_ood = np.concatenate([np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)])
    fpr, tpr, _ = roc_curve(is_ood, scores, drop_intermediate=False)
    # tpr is non-decreasing as the threshold falls; take the first point reaching 95% (a tiny
    # tolerance guards against k / n landing one ulp below 0.95).
    first = int(np.searchsorted(tpr, TPR_LEVEL - 1e-12, side="left"))
    return {
        "ood/auroc": float(roc_auc_score(is_ood, scores)),
        "ood/aupr_in": float(average_precision_score(1 - is_ood, -scores)),
        "ood/aupr_out": float(average_precision_score(is_ood, scores)),
        "ood/fpr95": float(fpr[first]),
    }


#: What an AUROC below 0.5 means (printed under the warnings of :func:`below_chance`).
BELOW_CHANCE_EXPLANATION = (
    "An AUROC below 0.5 is not a weak detector but a reversed one: the score ranks these OOD "
    "inputs as *more* in-distribution than the test set (1 - AUROC is what the reversed score "
    "would get). A common cause is inputs far outside the training range: after per-pixel "
    "standardisation (digits, MNIST) natural-image patches lie far from every training image, "
    "where ReLU networks extrapolate to large logits and confident predictions (Hein et al., "
    "CVPR 2019), so uncertainty scores fall instead of rising. Report such a set as a failure "
    "of the score, not as chance."
)


def below_chance(rows: dict[float, dict[str, float]], level: float = 0.5) -> list[str]:
    """One line per OOD set and score whose AUROC is below ``level`` at some width.

    Args:
        rows: width -> report row (keys ``ood/<set>/<score>/auroc``).

    Returns:
        e.g. ``["ood/patches/entropy/auroc is below 0.5 (chance) at widths 0.25, 1: 0.09-0.14"]``.
    """
    found: dict[str, list[tuple[float, float]]] = {}
    for w, row in sorted(rows.items()):
        for k, v in row.items():
            if k.startswith("ood/") and k.endswith("/auroc") and v == v and v < level:
                found.setdefault(k, []).append((w, v))
    lines = []
    for k, hits in found.items():
        lo, hi = min(v for _, v in hits), max(v for _, v in hits)
        span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"
        ws = ", ".join(f"{w:g}" for w, _ in hits)
        lines.append(f"{k} is below {level:g} (chance) at width(s) {ws}: {span}")
    return lines
