"""Coordinate ascent of the ordering posterior (ordering.gradient: coordinate): the update is the
minimiser of the negative ELBO in q(b) (checked by perturbation, not by restating its formula),
the per-group weight-KL cost equals the KL of the group's channels computed directly, the loss
curve equals the loss of explicitly truncated networks, and no learning rate moves the ordering."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import ConfigError, build_config
from bnn_nested.models.registry import build_model
from bnn_nested.nn.bayes import sparse_vd_kl
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.training import coordinate
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer


def _cfg(weights="point", **ordering):
    return build_config(
        {
            "model": {
                "name": "mlp",
                "hidden": [8, 8],
                "groups": 4,
                "kept": 1,
                "weight_posterior": weights,
            },
            "ordering": {"hard": True, "gradient": "coordinate", **ordering},
            "train": {"epochs": 2, "threads": 1},
            "data": {"batch_size": 16},
        }
    )


def _model(weights="point"):
    cfg = _cfg(weights)
    torch.manual_seed(0)
    return build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (5,), 3), cfg


def _neg_elbo(q, loss, cost, prior_logits, n):
    """Per-example negative ELBO in q (kl weight 1): E_q[L] + (E_q[C] + KL(q || p)) / N."""
    logq = torch.log(q)
    kl = (q * (logq - torch.log_softmax(prior_logits, 0))).sum()
    return float((q * loss).sum() + ((q * cost).sum() + kl) / n)


def test_set_logits_recovers_q_and_stays_finite_when_nearly_one_hot():
    unit = OrderingUnit(channels=6, groups=6, kept=1, hard=True, gradient="coordinate")
    logits = torch.log_softmax(torch.tensor([0.3, -1.0, 0.8, 0.1, -0.4, 0.5]), 0)
    unit.set_logits_(logits)
    assert torch.allclose(unit.logits().exp(), logits.exp(), atol=1e-6)
    unit.set_logits_(torch.tensor([-900.0, -800.0, 0.0, -700.0, -950.0, -990.0]))
    assert torch.isfinite(unit.r).all()
    assert int(unit.logits().argmax()) == 2 and float(unit.logits().exp()[2]) > 0.98


def test_update_minimises_the_negative_elbo_in_q():
    model, _ = _model("point")
    n = 20
    loss = torch.tensor([1.30, 0.95, 0.90, 0.88], dtype=torch.float64)  # per example, b = 0..3
    for _, u in model.ordering_units():
        u.loss_curve.copy_(loss)
    coordinate.update(model, n_train=n, kl_weight=1.0)
    u = dict(model.ordering_units())["features.0"]
    q = u.logits().exp().double()
    best = _neg_elbo(q, loss, torch.zeros(4, dtype=torch.float64), u.prior_logits.double(), n)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):  # any other q is worse
        other = torch.softmax(torch.log(q) + 0.5 * torch.randn(4, generator=gen).double(), 0)
        cost = torch.zeros(4, dtype=torch.float64)
        assert _neg_elbo(other, loss, cost, u.prior_logits.double(), n) >= best - 1e-9
    # and the data moved it: wider truncations, lower loss, more mass than under the prior alone
    assert float(q[1:].sum()) > float(torch.softmax(u.prior_logits, 0)[1:].sum())


def test_group_costs_are_the_weight_kl_of_each_groups_channels():
    model, _ = _model("gaussian")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("log_alpha"):
                p.uniform_(-6.0, 2.0)
    units = coordinate.coordinate_units(model)
    costs = coordinate.group_costs(model, units)
    layers = {"features.0": model.net.features[0], "features.2": model.net.features[2]}
    for (name, _), cost in zip(model.ordering_units(), costs):
        per_channel = sparse_vd_kl(layers[name].log_alpha).sum(1)  # (8,) output channels
        per_group = per_channel.reshape(4, 2).sum(1)  # 4 groups of 2 channels; group 0 kept
        assert torch.allclose(cost, per_group[1:], rtol=1e-5), (name, cost, per_group)


def test_loss_curve_is_the_loss_of_each_truncated_network():
    model, _ = _model("point")
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    u0, u1 = coordinate.coordinate_units(model)
    u1.set_logits_(torch.log(torch.tensor([0.1, 0.7, 0.1, 0.1])))  # mode: b = 1
    coordinate.loss_curves(model, [(x[:16], y[:16]), (x[16:], y[16:])], seed=0)
    net = model.net
    for b in range(4):  # independent: zero the dropped hidden units by hand, plain functional code
        torch.set_grad_enabled(False)
        keep0 = torch.zeros(8)
        keep0[: 2 * (1 + b)] = 1  # kept group + b ordered groups of 2 units
        keep1 = torch.zeros(8)
        keep1[: 2 * (1 + 1)] = 1
        h = torch.relu(x @ net.features[0].weight.T + net.features[0].bias) * keep0
        h = torch.relu(h @ net.features[2].weight.T + net.features[2].bias) * keep1
        logits = h @ net.classifier.weight.T + net.classifier.bias
        expected = float(torch.nn.functional.cross_entropy(logits, y))
        torch.set_grad_enabled(True)
        assert float(u0.loss_curve[b]) == pytest.approx(expected, rel=1e-5), b
    assert u0.forced is None and u1.forced is None


def test_passes_draw_from_the_half_q_half_uniform_proposal():
    unit = OrderingUnit(channels=4, groups=4, kept=0, hard=True, gradient="coordinate")
    unit.set_logits_(torch.log(torch.tensor([0.001, 0.001, 0.001, 0.001, 0.996])))
    torch.manual_seed(0)
    counts = torch.zeros(5)
    draws = 4000
    for _ in range(draws):
        counts[int(unit.sample_mask().sum())] += 1
    expected = 0.5 * unit.logits().exp() + 0.5 / 5
    se = (expected * (1 - expected) / draws).sqrt()
    assert ((counts / draws - expected).abs() < 4 * se).all(), (counts / draws, expected)


def _train(cfg, lr_ordering):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    cfg = cfg.model_copy(update={"ordering": cfg.ordering.model_copy(update={"lr": lr_ordering})})
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (5,), 3)
    trainer = Trainer(model, cfg, n_train=len(x), quiet=True)
    trainer.fit(DataLoader(TensorDataset(x, y), batch_size=16))
    return [u.logits().detach().clone() for _, u in model.ordering_units()]


def test_no_learning_rate_moves_the_ordering():
    cfg = _cfg("gaussian")
    slow, fast = _train(cfg, 1e-4), _train(cfg, 1e-1)
    for a, b in zip(slow, fast):
        assert torch.equal(a, b)
    # and it did move (from the initial continuation logits)
    init = OrderingUnit(channels=4, groups=4, kept=1, hard=True, gradient="coordinate").logits()
    assert any(not torch.allclose(a, init) for a in slow)


def test_coordinate_needs_learned_hard_masks():
    with pytest.raises(ConfigError, match="coordinate"):
        build_config({"ordering": {"gradient": "coordinate", "hard": False}})
    with pytest.raises(ValueError, match="coordinate"):
        OrderingUnit(channels=4, groups=4, hard=False, gradient="coordinate")


def _train_newton(log_alpha_lr):
    cfg = build_config(
        {
            "model": {
                "name": "mlp",
                "hidden": [8, 8],
                "groups": 4,
                "kept": 1,
                "weight_posterior": "gaussian",
                "weight_prior": "gaussian",
            },
            "ordering": {"hard": True, "gradient": "coordinate"},
            "train": {
                "epochs": 2,
                "threads": 1,
                "log_alpha_update": "newton",
                "newton_rate": 0.1,
                "log_alpha_lr": log_alpha_lr,
            },
        }
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(96, 5, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (5,), 3)
    start = [m.log_alpha.detach().clone() for m in model.modules() if hasattr(m, "log_alpha")]
    Trainer(model, cfg, n_train=len(x), quiet=True).fit(
        DataLoader(TensorDataset(x, y), batch_size=16)
    )
    end = [m.log_alpha.detach().clone() for m in model.modules() if hasattr(m, "log_alpha")]
    return start, end


def test_newton_variances_are_not_moved_by_the_optimiser():
    start, slow = _train_newton(1e-4)
    _, fast = _train_newton(1e-1)
    for a, b, s in zip(slow, fast, start):
        assert torch.equal(a, b)
        assert (a - s).abs().max() > 1.0  # and they moved far from the initial value


def test_newton_needs_the_gaussian_prior():
    with pytest.raises(ConfigError, match="newton"):
        build_config(
            {
                "model": {"weight_posterior": "gaussian", "weight_prior": "log_uniform"},
                "train": {"log_alpha_update": "newton"},
            }
        )


def test_loss_curves_use_a_random_subset_of_a_class_sorted_training_set(monkeypatch):
    cfg = _cfg("point", coordinate_examples=32)
    x = torch.randn(96, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(3).repeat_interleave(32)  # sorted by class: the first 32 are all class 0
    torch.manual_seed(0)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (5,), 3)
    seen = []
    import bnn_nested.training.trainer as trainer_module

    def capture(model, batches, seed):
        seen.extend(int(v) for _, yb in batches for v in yb)

    monkeypatch.setattr(trainer_module, "loss_curves", capture)
    Trainer(model, cfg, n_train=len(x), quiet=True).fit(
        DataLoader(TensorDataset(x, y), batch_size=16), epochs=1
    )
    assert len(seen) == 32 and len(set(seen)) == 3


def test_newton_damping_decays_with_the_cosine_schedule(monkeypatch):
    """Under train.scheduler: cosine the variances' damping in epoch e is newton_rate times the
    cosine factor (1 + cos(pi e / E)) / 2 (computed here, not read from the scheduler), so their
    one-batch noise dies out at the end; without a scheduler it stays newton_rate."""
    import math

    import bnn_nested.training.trainer as trainer_module

    def rates(scheduler):
        model_cfg = {"name": "mlp", "hidden": [8], "groups": 4, "kept": 1}
        model_cfg |= {"weight_posterior": "gaussian", "weight_prior": "gaussian"}
        train = {"epochs": 4, "threads": 1, "scheduler": scheduler, "newton_rate": 0.2}
        train["log_alpha_update"] = "newton"
        cfg = build_config({"model": model_cfg, "train": train})
        seen = []
        monkeypatch.setattr(
            trainer_module, "newton_variances", lambda model, scale, rate: seen.append(rate)
        )
        x = torch.randn(32, 5, generator=torch.Generator().manual_seed(0))
        y = (x[:, 0] > 0).long()
        torch.manual_seed(0)
        model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (5,), 2)
        Trainer(model, cfg, n_train=len(x), quiet=True).fit(
            DataLoader(TensorDataset(x, y), batch_size=16)
        )
        return seen

    cosine = rates("cosine")
    assert len(cosine) == 8  # 4 epochs of 2 steps
    for step, rate in enumerate(cosine):
        factor = (1 + math.cos(math.pi * (step // 2) / 4)) / 2
        assert rate == pytest.approx(0.2 * factor, rel=1e-9)
    assert rates("none") == [0.2] * 8
