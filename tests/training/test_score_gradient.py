"""The score-function gradient of the ordering (ordering.gradient: score): an unbiased estimate of
the gradient of E_q(b)[L(b)], checked against the exact gradient by enumerating the K + 1
truncations (a Monte-Carlo mean with a stated tolerance), and the objective's two-pass plan."""

import pytest
import torch

from bnn_nested.config import ConfigError, build_config
from bnn_nested.distributions import stick_breaking_logits
from bnn_nested.models.registry import build_model
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.training.objective import NegativeELBO
from bnn_nested.training.samplers import build_sampler

K = 4
#: a loss of the truncation b only (any function: the estimator must not care)
LOSS = torch.tensor([2.0, 1.1, 0.7, 0.65, 0.9])


def _objective(model=None):
    cfg = build_config({"ordering": {"hard": True, "gradient": "score"}})
    return NegativeELBO(model or torch.nn.Linear(1, 1), build_sampler(cfg.ordering), n_train=1)


def test_score_gradient_matches_the_exact_gradient_by_enumeration():
    torch.manual_seed(0)
    unit = OrderingUnit(channels=K, groups=K, kept=0, init=0.5, hard=True, gradient="score")
    unit.r.data = torch.tensor([1.5, 0.5, -0.5, 0.0])
    r = unit.r.detach().clone().requires_grad_(True)
    (torch.softmax(stick_breaking_logits(r), -1) * LOSS).sum().backward()
    exact = r.grad
    objective, draws = _objective(), 1500
    grads = []
    for _ in range(draws):
        unit.r.grad = None
        objective.plan(0, torch.Generator())
        for _ in range(2):  # two masked passes, as the sampler plans them
            b = int(unit.sample_mask().sum())
            objective._scored.append((unit.consume_log_q(), LOSS[b]))
        objective.score_term().backward()
        grads.append(unit.r.grad.clone())
    g = torch.stack(grads)
    se = g.std(0) / draws**0.5
    # unbiased: every coordinate within 4 standard errors of the exact gradient
    assert ((g.mean(0) - exact).abs() < 4 * se).all(), (g.mean(0), exact, se)
    # and the tolerance resolves the gradient: its largest coordinates are far outside it
    assert (exact.abs() > 4 * se).sum() >= 2


def test_a_score_step_runs_two_masked_passes_and_reports_their_mean():
    torch.manual_seed(0)
    cfg = build_config(
        {
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "ordering": {"hard": True, "gradient": "score"},
        }
    )
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (6,), 3)
    model.train()
    objective = NegativeELBO(model, build_sampler(cfg.ordering), n_train=100)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    plan = objective.plan(0, torch.Generator())
    assert [(p.mask, p.scale) for p in plan] == [(True, 0.5), (True, 0.5)]
    loss, parts = objective(x, y, step=0, epoch=0, generator=torch.Generator())
    loss.backward()
    unit = next(m for m in model.modules() if isinstance(m, OrderingUnit))
    assert unit.r.grad is not None and unit.r.grad.abs().sum() > 0
    assert parts["loss"] == pytest.approx(parts["data"] + parts["kl"] + parts["penalty"], rel=1e-6)


def test_score_gradient_needs_learned_hard_masks():
    with pytest.raises(ConfigError, match="gradient"):
        build_config({"ordering": {"hard": False, "gradient": "score"}})
    with pytest.raises(ConfigError, match="gradient"):
        build_config({"ordering": {"sampler": "sandwich", "hard": True, "gradient": "score"}})
