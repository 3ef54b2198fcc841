"""A user's module as a config names it under ``imports``: it registers a width sampler and an
uncertainty score."""

from __future__ import annotations

from bnn_nested.evaluation import register_score
from bnn_nested.evaluation.metrics import mean_probs
from bnn_nested.training import Pass, WidthSampler, register_sampler

#: how often the sampler planned a step (the test reads it: the trainer ran the user's sampler)
CALLS = {"passes": 0}


@register_sampler("full_and_half")
class FullAndHalf(WidthSampler):
    """Every step: the full width, then half the width distilled from it."""

    kl_keep = "all"

    def passes(self, step, generator):
        CALLS["passes"] += 1
        return [Pass(1.0, mask=False), Pass(0.5, mask=False, distill=True)]


@register_score("margin")
def margin(probs):
    """``1 - (p̄_(1) - p̄_(2))``: a small gap between the two likeliest classes is uncertain."""
    top2 = mean_probs(probs).topk(2, -1).values
    return 1.0 - (top2[..., 0] - top2[..., 1])
