"""The trainer: ELBO composition, samplers, reproducibility, ordering learns."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.training.samplers import SAMPLERS, build_sampler, kl_weight_at, temperature_at
from bnn_nested.training.trainer import NonFiniteLossError, Trainer
from tests.zoo import mlp


def _data(n=64, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def _setup(sampler="vou", seed=0, **over):
    cfg = build_config(
        {
            "seed": seed,
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "ordering": {"sampler": sampler, **over},
            "train": {"epochs": 2},
            "regularization": {"kind": "none"},
        }
    )
    torch.manual_seed(seed)
    model = mlp(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
    return cfg, model


def test_loss_is_cross_entropy_plus_kl_over_n():
    cfg, model = _setup(hard=False)  # relaxed masks (the paper's; the default is hard)
    tr = Trainer(model, cfg, n_train=100, quiet=True)
    x, y = _data()[:8]
    torch.manual_seed(5)
    loss, parts = tr.loss(x, y)
    torch.manual_seed(5)
    with model.masking(True):
        model(x)  # the same mask: the relaxed ordering KL is estimated at the sampled mask
    assert parts["kl"] == pytest.approx(float(model.kl().detach()) / 100, rel=1e-5)
    assert parts["loss"] == pytest.approx(parts["data"] + parts["kl"], rel=1e-6)
    torch.manual_seed(5)
    with model.masking(True):
        logits = model(x)
    assert parts["data"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y).detach()), rel=1e-5
    )


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_trains(sampler):
    cfg, model = _setup(sampler)
    loader = DataLoader(
        _data(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    tr = Trainer(model, cfg, n_train=64, quiet=True)
    hist = tr.fit(loader, loader, epochs=3)
    assert len(hist) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert tr.step == 12


def test_sandwich_plan_and_distillation():
    cfg, _ = _setup("sandwich", sandwich_random=2, min_width=0.3)
    passes = build_sampler(cfg.ordering).passes(0, torch.Generator().manual_seed(0))
    assert [p.width for p in passes[:2]] == [1.0, 0.3] and len(passes) == 4
    assert not passes[0].distill and all(p.distill for p in passes[1:])
    assert all(0.3 <= p.width <= 1.0 for p in passes)


def test_nested_dropout_has_fixed_posterior_and_no_kl():
    _, model = _setup("nested_dropout")
    assert float(model.kl()) == 0.0
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.endswith(".r"))


def test_reproducible_with_same_seed():
    def run():
        cfg, model = _setup(seed=3)
        loader = DataLoader(
            _data(), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        Trainer(model, cfg, n_train=64, quiet=True).fit(loader, epochs=2)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


@pytest.mark.parametrize("hard,epochs", [(True, 5), (False, 12)])
def test_ordering_parameters_learn(hard, epochs):
    """With a strong KL weight toward a geometric prior, keep probabilities move toward the prior
    (hard masks: exact categorical KL; relaxed masks: its Monte-Carlo estimate, noisier)."""
    cfg, model = _setup(kl_weight=200.0, prior_pi=0.5, lr=0.05, hard=hard)
    before = model.keep_probs()["features.0"].clone()
    loader = DataLoader(_data(), batch_size=16)
    Trainer(model, cfg, n_train=64, quiet=True).fit(loader, epochs=epochs)
    after = model.keep_probs()["features.0"]
    assert (after < before - 0.05).all(), (before, after)


def test_schedules():
    cfg, _ = _setup(schedule="exponential", temperature=2.0, temperature_min=0.5, anneal_rate=0.5)
    assert temperature_at(cfg.ordering, 0) == pytest.approx(2.0)
    assert temperature_at(cfg.ordering, 1) == pytest.approx(2.0 * 2.718281828**-0.5, rel=1e-5)
    assert temperature_at(cfg.ordering, 100) == pytest.approx(0.5)
    cfg, _ = _setup(kl_warmup_epochs=4, kl_weight=2.0)
    assert [kl_weight_at(cfg.ordering, e) for e in range(5)] == [0.5, 1.0, 1.5, 2.0, 2.0]


def test_non_finite_loss_stops():
    cfg, model = _setup()
    tr = Trainer(model, cfg, n_train=64, quiet=True)
    x, y = _data()[:4]
    with pytest.raises(NonFiniteLossError, match="step 0"):
        tr.train_step(x * float("nan"), y)


def test_trainer_runs_from_typed_settings_on_plain_loaders():
    """No YAML, no Config: TrainConfig + OrderingConfig, a plain DataLoader, N from its dataset."""
    from bnn_nested.config import OrderingConfig, TrainConfig

    torch.manual_seed(0)
    ordering = OrderingConfig(sampler="nested_dropout")
    model = mlp(6, 3, [16], 4, 1, build_sampler(ordering).ordering_kwargs())
    data = _data(n=48)
    tr = Trainer(model, TrainConfig(epochs=2, lr=1e-2), ordering, quiet=True)
    with pytest.raises(ValueError, match="n_train"):
        tr.loss(*data[:4])  # N is not known before fit()
    history = tr.fit(DataLoader(data, batch_size=16, shuffle=True), DataLoader(data, batch_size=48))
    assert tr.n_train == 48
    assert [h["epoch"] for h in history] == [1, 2]
    assert tr.step == 6  # 3 batches x 2 epochs
    assert 0.0 <= history[-1]["val_acc"] <= 1.0
    # the composed objective is the independent sum: CE of the sampled pass + KL/N (+ 0 penalty)
    torch.manual_seed(3)
    x, y = data[:8]
    loss, parts = tr.loss(x, y)
    assert float(loss.detach()) == pytest.approx(
        parts["data"] + parts["kl"] + parts["penalty"], rel=1e-6
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' resolves to CUDA here")
def test_fp16_on_cpu_is_refused_once_with_the_field_named():
    from bnn_nested.config import TrainConfig
    from bnn_nested.training.optim import Precision

    with pytest.raises(ValueError, match=r"train.precision: 'fp16' needs CUDA"):
        Precision("fp16", torch.device("cpu"))
    cfg = TrainConfig(precision="fp16", device="auto")  # statically fine; resolves to the CPU here
    with pytest.raises(ValueError, match=r"train.precision: 'fp16' needs CUDA"):
        Trainer(mlp(6, 3, [16], 4, 1, {}), cfg, n_train=8)


def test_a_stop_at_the_end_of_the_last_epoch_names_that_epoch():
    """Ctrl-C during the last epoch of a 2-epoch run: 'epoch 2 of 2', not 'epoch 3'."""
    from bnn_nested.training.trainer import TrainingInterrupted

    cfg, model = _setup()
    tr = Trainer(model, cfg, quiet=True)

    def stop_at_last(trainer, record):
        trainer._stop_requested = record["epoch"] == 2

    with pytest.raises(TrainingInterrupted, match=r"\(epoch 2 of 2\)"):
        tr.fit(DataLoader(_data(), batch_size=16), on_epoch_end=stop_at_last)
