"""Coupled / decoupled weight decay against PyTorch's own optimizers."""

import pytest
import torch
from torch import nn

from bnn_nested.regularization import WeightDecay

X = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3))


def _run(model, opt, reg=None, steps=6, sched=None):
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X), Y).backward()
        if reg is not None:
            reg.before_step(model, opt)
        opt.step()
        if sched is not None:
            sched.step()
    return model


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}])
def test_coupled_equals_sgd_weight_decay_exactly(kwargs):
    ours, ref = _model(), _model()
    reg = WeightDecay(0.01, mode="coupled", exclude_bias_and_norm=False)
    reg.setup(ours)
    _run(ours, torch.optim.SGD(ours.parameters(), lr=0.1, **kwargs), reg)
    _run(ref, torch.optim.SGD(ref.parameters(), lr=0.1, weight_decay=0.01, **kwargs))
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n
    plain = _run(_model(), torch.optim.SGD(_model().parameters(), lr=0.1, **kwargs))
    assert not torch.allclose(ours[0].weight, plain[0].weight, atol=1e-4)


def test_coupled_excluding_bias_and_norm_equals_param_groups():
    ours, ref = _model(), _model()
    reg = WeightDecay(0.05)
    reg.setup(ours)
    assert sorted(reg.params) == ["0.weight", "3.weight"]
    decayed = [ref[0].weight, ref[3].weight]
    rest = [p for p in ref.parameters() if all(p is not d for d in decayed)]
    groups = [{"params": decayed, "weight_decay": 0.05}, {"params": rest}]
    _run(ours, torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9), reg)
    _run(ref, torch.optim.SGD(groups, lr=0.1, momentum=0.9))
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), n


def test_decoupled_with_adam_equals_adamw():
    ours, ref = _model(), _model()
    reg = WeightDecay(0.1, mode="decoupled", exclude_bias_and_norm=False)
    reg.setup(ours)
    _run(ours, torch.optim.Adam(ours.parameters(), lr=0.01, weight_decay=0), reg)
    _run(ref, torch.optim.AdamW(ref.parameters(), lr=0.01, weight_decay=0.1))
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n
    # decaying *after* the step instead would differ by lr*wd*lr*update: check we are not there
    plain = _run(_model(), torch.optim.Adam(_model().parameters(), lr=0.01))
    assert not torch.allclose(ours[0].weight, plain[0].weight, atol=1e-4)


def test_decoupled_uses_each_groups_current_lr():
    ours, ref = _model(), _model()
    reg = WeightDecay(0.2, mode="decoupled")
    reg.setup(ours)

    def groups(m, wd):
        return [
            {"params": [m[0].weight], "lr": 0.02, "weight_decay": wd},
            {"params": [m[3].weight], "lr": 0.005, "weight_decay": wd},
            {"params": [m[0].bias, m[1].weight, m[1].bias, m[3].bias], "weight_decay": 0.0},
        ]

    opt = torch.optim.Adam(groups(ours, 0.0), lr=0.01)
    opt_ref = torch.optim.AdamW(groups(ref, 0.2), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    sched_ref = torch.optim.lr_scheduler.StepLR(opt_ref, step_size=2, gamma=0.5)
    _run(ours, opt, reg, sched=sched)
    _run(ref, opt_ref, sched=sched_ref)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, atol=1e-6, rtol=0), n


def test_parameter_without_grad_is_not_decayed():
    model = _model()
    reg = WeightDecay(0.5, mode="decoupled")
    reg.setup(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    w = model[3].weight.detach().clone()
    reg.before_step(model, opt)  # no backward yet: no grads
    assert torch.equal(model[3].weight, w)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="coefficient"):
        WeightDecay(-1.0)
    with pytest.raises(ValueError, match="mode"):
        WeightDecay(0.1, mode="adamw")
