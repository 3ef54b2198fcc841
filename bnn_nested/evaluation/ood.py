"""Out-of-distribution (OOD) scores and detection metrics.

Convention, used by every function here: **a higher score means more likely OOD, and OOD is the
positive class** (as in pytorch-ood). Scores that are naturally "higher = more in-distribution"
(maximum logit, log-sum-exp) are negated; the maximum softmax probability becomes ``1 - max p̄``.
The same scores rank examples for selective prediction and the cascade
(:mod:`bnn_nested.evaluation.selective`, :mod:`bnn_nested.deploy.cascade`): one implementation of
each, in :data:`SCORES`. A user module (listed under a config's ``imports``) adds its own with
:func:`register_score`.

Scores (Hendrycks & Gimpel 2017 for MSP; Hendrycks et al. 2022 for max logit; Liu et al. 2020,
"Energy-based Out-of-distribution Detection", eq. 5 for the energy; Gal 2016 / Depeweg et al.
2018 for the entropy decomposition):

==================== ============ ====================================================
name                 input        score (higher = more OOD)
==================== ============ ====================================================
``msp``              probs        ``1 - max_c p̄_c``
``max_logit``        logits       ``-max_c z_c`` (averaged over ``S``)
``energy``           logits       ``E = -T logsumexp(z / T)`` (averaged over ``S``)
``entropy``          probs        ``H[p̄]``
``mutual_information`` samples    ``H[p̄] - mean_s H[p_s]``
``expected_entropy`` samples      ``mean_s H[p_s]``
==================== ============ ====================================================

Metrics (scikit-learn): AUROC, AUPR-Out (OOD positive), AUPR-In (in-distribution positive,
scores negated), FPR95 as the papers define it (ODIN, Liang et al. 2018; energy score, Liu et al.
2020): the share of OOD inputs accepted as in-distribution at the threshold that keeps 95% of the
in-distribution inputs; and ``fpr95_in``, the share of in-distribution inputs flagged at the
threshold that detects 95% of OOD inputs (docs/METHODS.md#ood-detection).

Example::

    s_in, s_out = msp_score(probs_test), msp_score(probs_noise)      # (B_in,), (B_out,)
    ood_metrics(s_in, s_out)  # {"ood/auroc": ..., "ood/fpr95": ...}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from bnn_nested.config import BUILTIN_SCORES, accepted_scores, unknown_scores
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
    "register_score",
    "probability_scores",
    "check_scores",
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

#: A score's name: one of :data:`SCORES` (the built-in ones or a user's, :func:`register_score`).
OODScore = str
#: What a score function takes: ``"probs"`` (``(B, C)`` or ``(S, B, C)``, averaged over ``S``),
#: ``"samples"`` (``(S, B, C)`` probabilities of the Monte-Carlo samples, read one by one) or
#: ``"logits"``.
ScoreInput = Literal["probs", "samples", "logits"]
SCORE_INPUT_KINDS: tuple[str, ...] = ("probs", "samples", "logits")

#: Recall at which ``ood/fpr95`` (in-distribution recall) and ``ood/fpr95_in`` (OOD recall) are
#: read off.
TPR_LEVEL: float = 0.95

#: Whether a larger value is better, for every key returned by :func:`ood_metrics`.
HIGHER_IS_BETTER: dict[str, bool] = {
    "ood/auroc": True,
    "ood/aupr_in": True,
    "ood/aupr_out": True,
    "ood/fpr95": False,
    "ood/fpr95_in": False,
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
    """One minus the maximum softmax probability, ``1 - max_c p̄_c``; higher score = more likely
    OOD (an offset of Hendrycks & Gimpel's ``-max p̄``: the same ranking, and a cascade's or
    selective threshold reads as a probability of error).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities (MC-averaged first).

    Returns:
        ``(B,)`` float64 scores in ``[0, 1 - 1/C]``.

    Example:
        >>> msp_score(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))  # second is more OOD
        tensor([0.1000, 0.5000], dtype=torch.float64)
    """
    return 1.0 - mean_probs(probs).max(-1).values


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
#: Score name -> what its function takes (:data:`ScoreInput`).
SCORE_INPUTS: dict[str, ScoreInput] = {}


def register_score(
    name: str,
    fn: Callable[[Tensor], Tensor] | None = None,
    *,
    takes: ScoreInput = "probs",
    replace: bool = False,
):
    """Add an uncertainty score under ``name`` (a decorator without ``fn``). ``fn`` maps the
    tensor named by ``takes`` to ``(B,)`` scores, higher = more uncertain / more likely OOD; every
    score serves OOD detection (``evaluate --scores``), and those of probabilities (``"probs"``,
    ``"samples"``) also rank for selective prediction and the cascade.

    Example (in a module a config lists under ``imports``)::

        @register_score("margin")
        def margin(probs):  # (B, C) or (S, B, C)
            top2 = mean_probs(probs).topk(2, -1).values
            return 1.0 - (top2[..., 0] - top2[..., 1])
    """
    if takes not in SCORE_INPUT_KINDS:
        raise ValueError(f"takes must be one of {', '.join(SCORE_INPUT_KINDS)}; got {takes!r}")

    def add(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        SCORES.register(name, f, replace=replace)
        SCORE_INPUTS[name] = takes
        return f

    return add(fn) if fn is not None else add


for _name, _fn in (
    ("msp", msp_score),
    ("max_logit", max_logit_score),
    ("energy", energy_score),
    ("entropy", entropy_score),
    ("mutual_information", mutual_information_score),
    ("expected_entropy", expected_entropy_score),
):
    register_score(_name, _fn, takes=BUILTIN_SCORES[_name])  # type: ignore[arg-type]


def probability_scores() -> list[str]:
    """The scores of probabilities (the ones selective prediction and the cascade can rank by)."""
    return accepted_scores(SCORE_INPUTS, probabilities=True)


def check_scores(names, field: str, probabilities: bool = False) -> list[str]:
    """``names`` if every one is a registered score (of probabilities, with ``probabilities``),
    else a one-line ``ValueError`` naming ``field`` and the accepted names."""
    hint = "a module in the run's imports can add more"
    message = unknown_scores(names, SCORE_INPUTS, field, probabilities, hint)
    if message:
        raise ValueError(message)
    return list(names)


def compute_score(
    name: OODScore, *, probs: Tensor | None = None, logits: Tensor | None = None
) -> Tensor:
    """Compute a named OOD score (higher = more likely OOD; OOD is the positive class).

    Probability-based scores use ``probs`` if given, else ``softmax(logits)``; logit-based scores
    need ``logits``.

    Args:
        name: a name in :data:`SCORES`.
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
    if probs is None:  # "probs" and "samples" both take the Monte-Carlo samples' probabilities
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
    * ``ood/fpr95`` (the literature's FPR at 95% TPR, in-distribution positive: Liang et al. 2018,
      Liu et al. 2020): fraction of OOD inputs accepted (``score <= t``) at the smallest threshold
      ``t`` that accepts at least :data:`TPR_LEVEL` = 95% of in-distribution inputs;
    * ``ood/fpr95_in`` (OOD positive): fraction of in-distribution inputs flagged
      (``score >= t``) at the largest threshold ``t`` that flags at least 95% of OOD inputs.

    Args:
        scores_in: ``(N_in,)`` scores of in-distribution inputs.
        scores_out: ``(N_out,)`` scores of OOD inputs.

    Returns:
        dict with the five keys above (see :data:`HIGHER_IS_BETTER`).

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

    def fpr_at_95(positive: np.ndarray, score: np.ndarray) -> float:
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
        # tpr is non-decreasing as the threshold falls; take the first point reaching 95% (a tiny
        # tolerance guards against k / n landing one ulp below 0.95).
        return float(fpr[int(np.searchsorted(tpr, TPR_LEVEL - 1e-12, side="left"))])

    return {
        "ood/auroc": float(roc_auc_score(is_ood, scores)),
        "ood/aupr_in": float(average_precision_score(1 - is_ood, -scores)),
        "ood/aupr_out": float(average_precision_score(is_ood, scores)),
        "ood/fpr95": fpr_at_95(1 - is_ood, -scores),
        "ood/fpr95_in": fpr_at_95(is_ood, scores),
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
