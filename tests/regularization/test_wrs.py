"""Weight rescaling (WRS) and the optimizer loop shared with FixNorm."""

import copy

import pytest
import torch
from torch import nn

from bnn_nested.regularization import FixNorm, WeightRescaling

from .test_targets import GaussLinear, SmallCNN

X = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 5, (8,), generator=torch.Generator().manual_seed(2))
TARGETS = ["features.0", "features.3", "head.0"]
OTHERS = ["features.6", "head.3"]  # weight layers with no norm after them


def _model(seed: int = 0) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN()


def _rows(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1)


def _step(model, opt, reg=None, step=1):
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), Y).backward()
    if reg is not None:
        reg.before_step(model, opt)
    opt.step()
    if reg is not None:
        reg.after_step(model, step)


def test_one_step_unit_filters_and_untouched_rest():
    model, ref = _model(), _model()
    reg = WeightRescaling(other_weight_decay=0.0, example_input=X[:2])
    reg.setup(model)
    assert reg.targets == TARGETS
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1)
    _step(model, opt, reg)
    _step(ref, opt_ref)
    mods, ref_mods = dict(model.named_modules()), dict(ref.named_modules())
    for n in TARGETS:
        w, w_ref = mods[n].weight, ref_mods[n].weight
        assert torch.allclose(_rows(w), torch.ones(w.shape[0]), atol=1e-6)
        # the projection only rescales: direction = plain SGD result / its filter norm
        expect = w_ref / _rows(w_ref).reshape(-1, *[1] * (w.dim() - 1))
        assert torch.allclose(w, expect, atol=1e-7)
    for name, p in model.named_parameters():  # everything else is exactly plain SGD
        if name.rsplit(".", 1)[0] not in TARGETS or name.endswith("bias"):
            assert torch.equal(p, dict(ref.named_parameters())[name]), name


def test_other_weight_decay_matches_sgd_on_unnormalized_weights_only():
    # WRS with its own decay == WRS without decay + SGD(weight_decay) on the un-normalized weights
    model, ref = _model(), _model()
    reg = WeightRescaling(other_weight_decay=0.05, example_input=X[:2])
    reg_ref = WeightRescaling(other_weight_decay=0.0, example_input=X[:2])
    reg.setup(model)
    reg_ref.setup(ref)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    decayed = {f"{n}.weight" for n in OTHERS}
    params = dict(ref.named_parameters())
    opt_ref = torch.optim.SGD(
        [
            {"params": [params[n] for n in sorted(decayed)], "weight_decay": 0.05},
            {"params": [p for n, p in params.items() if n not in decayed]},
        ],
        lr=0.1,
        momentum=0.9,
    )
    for step in range(1, 4):
        _step(model, opt, reg, step)
        _step(ref, opt_ref, reg_ref, step)
    for name, p in model.named_parameters():
        assert torch.equal(p, params[name]), name
    plain = _model()  # and the decay did something
    assert not torch.allclose(model.head[3].weight, plain.head[3].weight, atol=1e-3)


def test_rescaling_does_not_change_train_mode_function():
    model = _model().train()
    for m in model.modules():  # BN's eps=1e-5 is the only thing breaking exact scale invariance
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eps = 1e-12
    reg = WeightRescaling(example_input=X[:2])
    reg.setup(model)
    out = model(X)
    w0 = model.features[0].weight.detach().clone()
    reg.after_step(model, 1)
    assert not torch.allclose(model.features[0].weight, w0, atol=1e-2)  # it did rescale
    assert torch.allclose(model(X), out, atol=1e-5)


def test_layer_granularity_whole_tensor_unit():
    model = _model()
    reg = WeightRescaling(granularity="layer", example_input=X[:2])
    reg.setup(model)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if n in TARGETS}
    reg.after_step(model, 1)
    for n, m in model.named_modules():
        if n in TARGETS:
            assert abs(m.weight.norm().item() - 1.0) < 1e-6
            assert torch.allclose(m.weight, before[n] / before[n].norm(), atol=1e-7)
            assert not torch.allclose(_rows(m.weight), torch.ones(m.weight.shape[0]), atol=1e-3)


def test_every_n_acts_only_on_multiples():
    model = _model()
    reg = WeightRescaling(every=3, example_input=X[:2])
    reg.setup(model)
    w = model.features[3].weight
    for step in range(1, 7):
        with torch.no_grad():
            w.mul_(2.0)
        reg.after_step(model, step)
        is_unit = torch.allclose(_rows(w), torch.ones(6), atol=1e-6)
        assert is_unit == (step % 3 == 0), step


def test_initial_target_and_state_dict_roundtrip():
    model = _model()
    init = _rows(model.features[0].weight).detach().clone()
    reg = WeightRescaling(target="initial", example_input=X[:2])
    reg.setup(model)
    with torch.no_grad():
        model.features[0].weight.mul_(torch.arange(1.0, 5.0).view(4, 1, 1, 1))
    reg.after_step(model, 1)
    assert torch.allclose(_rows(model.features[0].weight), init, atol=1e-6)
    # resume: a fresh regularizer loaded before setup keeps the saved norms
    other = _model(seed=5)
    reg2 = WeightRescaling(target="initial")
    reg2.load_state_dict(copy.deepcopy(reg.state_dict()))
    reg2.setup(other)  # no example_input needed: targets come from the state
    reg2.after_step(other, 1)
    assert torch.allclose(_rows(other.features[0].weight), init, atol=1e-6)


def test_log_alpha_never_rescaled():
    torch.manual_seed(0)
    model = nn.Sequential(GaussLinear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    reg = WeightRescaling(example_input=torch.randn(2, 3))
    reg.setup(model)
    assert reg.targets == ["0"]
    la = model[0].log_alpha.detach().clone()
    reg.after_step(model, 1)
    assert torch.equal(model[0].log_alpha, la)
    assert torch.allclose(_rows(model[0].weight), torch.ones(4), atol=1e-6)


def test_bad_options_raise():
    with pytest.raises(ValueError, match="granularity"):
        WeightRescaling(granularity="channel")
    with pytest.raises(ValueError, match="target"):
        WeightRescaling(target="two")
    with pytest.raises(ValueError, match="every"):
        WeightRescaling(every=0)
    with pytest.raises(ValueError, match="other_weight_decay"):
        WeightRescaling(other_weight_decay=-1.0)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("method", ["wrs", "fixnorm"])
def test_projections_hold_with_every_optimizer(opt_name, method):
    model = _model()
    init = {n: _rows(m.weight).detach().clone() for n, m in model.named_modules() if n in TARGETS}
    if method == "wrs":
        reg = WeightRescaling(example_input=X[:2])
    else:
        reg = FixNorm(classifier_norm=2.0, example_input=X[:2])
    reg.setup(model)
    opt = OPTIMIZERS[opt_name](model.parameters())
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for step in range(1, 5):
        _step(model, opt, reg, step)
    mods = dict(model.named_modules())
    for n in TARGETS:
        want = torch.ones_like(init[n]) if method == "wrs" else init[n]
        assert torch.allclose(_rows(mods[n].weight), want, atol=1e-6), n
    if method == "fixnorm":
        assert torch.allclose(_rows(mods["head.3"].weight), torch.full((5,), 2.0), atol=1e-6)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
