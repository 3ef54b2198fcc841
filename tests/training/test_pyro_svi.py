"""Pyro SVI over a nested model: the loss equals the built-in trainer's, and SVI trains it."""

import pyro
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO

from bnn_nested.config import build_config
from bnn_nested.training.pyro_svi import PyroNestedModel
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer
from tests.zoo import mlp

N = 200


def _setup(gaussian: bool):
    cfg = build_config(
        {
            "model": {"hidden": [8, 8], "groups": 4, "kept": 1},
            "ordering": {"sampler": "vou", "temperature": 0.7},
            "regularization": {"kind": "none"},
        }
    )
    torch.manual_seed(0)
    weights = {"weight_posterior": "gaussian", "init_log_alpha": -1.0} if gaussian else {}
    model = mlp(5, 3, [8, 8], 4, 1, build_sampler(cfg.ordering).ordering_kwargs(), **weights)
    for _, u in model.ordering_units():
        with torch.no_grad():
            u.r.copy_(torch.randn(3) * 2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
    return cfg, model, x, y


def _trainer_and_svi_losses(cfg, model, x, y):
    """The trainer's per-example loss (and its parts) and the SVI loss over N, each computed after
    seeding the global RNG with 7 (the same mask and weight draws), and the Pyro model."""
    trainer = Trainer(model, cfg, n_train=N, quiet=True)
    model.train()
    torch.manual_seed(7)
    expected, parts = trainer.loss(x, y)
    pm = PyroNestedModel(model, n_train=N)
    torch.manual_seed(7)
    got = TraceMeanField_ELBO().differentiable_loss(pm.model, pm.guide, x, y) / N
    return expected, parts, got, pm


@pytest.mark.parametrize("gaussian", [False, True])
def test_svi_loss_per_example_equals_trainer_loss(gaussian):
    cfg, model, x, y = _setup(gaussian)
    expected, parts, got, pm = _trainer_and_svi_losses(cfg, model, x, y)
    assert parts["kl"] > 0.0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    torch.manual_seed(8)
    other = TraceMeanField_ELBO().differentiable_loss(pm.model, pm.guide, x, y) / N
    assert not torch.allclose(other, expected)  # the draws matter: equality is not trivial


def test_svi_trains_the_ordering_and_weights():
    cfg, model, x, y = _setup(True)
    pm = PyroNestedModel(model, n_train=N)
    svi = SVI(pm.model, pm.guide, pyro.optim.Adam({"lr": 0.05}), TraceMeanField_ELBO())
    r0 = {n: u.r.detach().clone() for n, u in model.ordering_units()}
    torch.manual_seed(0)
    first = sum(svi.step(x, y) for _ in range(5)) / 5
    for _ in range(40):
        svi.step(x, y)
    last = sum(svi.step(x, y) for _ in range(5)) / 5
    assert last < first
    assert any(not torch.equal(u.r, r0[n]) for n, u in model.ordering_units())


def test_rejects_per_example_masks():
    model = mlp(5, 3, [8], 4, 1, {"per_example": True})
    with pytest.raises(ValueError, match="per_example"):
        PyroNestedModel(model, n_train=10)


@pytest.mark.slow
def test_example_script_smoke_runs_one_step(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "pyro_svi.py"
    spec = importlib.util.spec_from_file_location("pyro_svi_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--steps", "1"]) == 0
    assert "cls/acc" in capsys.readouterr().out


@pytest.mark.parametrize(
    "model_cfg, shape",
    [
        ({"name": "mlp", "hidden": [8, 8], "groups": 4, "kept": 1}, (5,)),
        ({"name": "lenet", "hidden": [4, 8, 16], "groups": 4, "kept": 1}, (1, 28, 28)),
    ],
)
def test_svi_loss_equals_trainer_loss_on_nestified_gaussian_models_from_configs(model_cfg, shape):
    """The models a config builds are nestified: the SVI weight KL must be theirs (it was 0)."""
    from bnn_nested.models.registry import build_model

    cfg = build_config(
        {
            "model": {**model_cfg, "weight_posterior": "gaussian", "init_log_alpha": -2.0},
            "ordering": {"sampler": "vou", "hard": True},
            "regularization": {"kind": "none"},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, 3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, *shape, generator=g), torch.randint(0, 3, (8,), generator=g)
    expected, parts, got, _ = _trainer_and_svi_losses(cfg, model, x, y)
    assert parts["kl"] > 0.5  # KL / N: the weight KL is most of it
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
