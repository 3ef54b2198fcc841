"""RegularizationConfig validation and the build_regularizer factory."""

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bnn_nested.regularization import (
    FixNorm,
    InvariantRegularizer,
    RegularizationConfig,
    Regularizer,
    WeightDecay,
    WeightRescaling,
    build_regularizer,
)


def test_defaults_are_wrs():
    cfg = RegularizationConfig()
    assert cfg.kind == "wrs"
    assert isinstance(build_regularizer(cfg), WeightRescaling)


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "wrs", "unknown_key": 1},
        {"kind": "l1"},
        {"kind": "wrs", "every": 0},
        {"kind": "wrs", "every": 1.5},
        {"kind": "wrs", "granularity": "channel"},
        {"kind": "wrs", "target": "two"},
        {"kind": "wrs", "other_weight_decay": -1e-4},
        {"kind": "fixnorm", "classifier_norm": 0.0},
        {"kind": "fixnorm", "classifier_granularity": "rows"},
        {"kind": "weight_decay", "weight_decay": -0.1},
        {"kind": "weight_decay", "mode": "adamw"},
        {"kind": "invariant", "coefficient": -1.0},
        {"kind": "invariant", "variant": "tree"},
        {"kind": "invariant", "blocks": [["a"], []]},
        {"kind": "weight_decay", "granularity": "layer"},  # option of another kind
        {"kind": "none", "every": 2},
        {"kind": "fixnorm", "target": "initial"},
        {"kind": "wrs", "include": "features.*"},  # must be a list
    ],
)
def test_invalid_configs_raise(bad):
    with pytest.raises(ValidationError):
        RegularizationConfig.model_validate(bad)


def test_factory_builds_each_kind_with_its_options():
    reg = build_regularizer(
        RegularizationConfig(
            kind="wrs", granularity="layer", target="initial", every=4, other_weight_decay=0.0
        )
    )
    assert isinstance(reg, WeightRescaling)
    assert (reg.granularity, reg.target, reg.every, reg.other_weight_decay) == (
        "layer",
        "initial",
        4,
        0.0,
    )
    reg = build_regularizer(
        RegularizationConfig(
            kind="fixnorm", classifier_norm=2.0, classifier_granularity="matrix", exclude=["a*"]
        )
    )
    assert isinstance(reg, FixNorm)
    assert (reg.classifier_norm, reg.classifier_granularity, reg.exclude) == (
        2.0,
        "matrix",
        ("a*",),
    )
    reg = build_regularizer(
        RegularizationConfig(kind="weight_decay", weight_decay=1e-3, mode="decoupled")
    )
    assert isinstance(reg, WeightDecay)
    assert (reg.coefficient, reg.mode, reg.exclude_bias_and_norm) == (1e-3, "decoupled", True)
    reg = build_regularizer(
        RegularizationConfig(kind="invariant", coefficient=0.2, variant="residual", blocks=[["x"]])
    )
    assert isinstance(reg, InvariantRegularizer)
    assert (reg.coefficient, reg.variant, reg.blocks) == (0.2, "residual", [["x"]])
    reg = build_regularizer(RegularizationConfig(kind="none"))
    assert type(reg) is Regularizer
    assert reg.penalty(nn.Linear(2, 2)) == 0.0


def test_factory_passes_example_input_and_round_trips_json():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    cfg = RegularizationConfig(kind="fixnorm", classifier_norm=1.5)
    assert RegularizationConfig.model_validate_json(cfg.model_dump_json()) == cfg
    # a stray option at its default value is harmless (full dumps must reload)
    assert RegularizationConfig(kind="fixnorm", target="unit").kind == "fixnorm"
    reg = build_regularizer(cfg, example_input=torch.randn(2, 3))
    reg.setup(model)
    assert reg.targets == ["0"] and reg.classifier == "3"
    assert torch.allclose(model[3].weight.norm(dim=1), torch.full((2,), 1.5), atol=1e-6)
