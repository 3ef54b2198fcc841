"""Distributions over ordered truncations: the Downhill distribution and ordering priors/posteriors."""

from bnn_nested.distributions.downhill import (
    Downhill,
    concrete_log_density,
    concrete_log_ratio,
    downhill,
    downhill_kl_mc,
    downhill_rsample,
    masks_to_simplex,
    simplex_to_masks,
)
from bnn_nested.distributions.ordering import (
    DEFAULT_INIT,
    DEFAULT_PRIOR_PI,
    LOGIT_CLIP,
    categorical_kl,
    keep_probs_from_logits,
    stick_breaking_logits,
    truncated_geometric_logits,
    uniform_logits,
)

__all__ = [
    "DEFAULT_INIT",
    "DEFAULT_PRIOR_PI",
    "LOGIT_CLIP",
    "Downhill",
    "categorical_kl",
    "concrete_log_density",
    "concrete_log_ratio",
    "downhill",
    "downhill_kl_mc",
    "downhill_rsample",
    "keep_probs_from_logits",
    "masks_to_simplex",
    "simplex_to_masks",
    "stick_breaking_logits",
    "truncated_geometric_logits",
    "uniform_logits",
]
