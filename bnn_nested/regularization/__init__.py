"""Norm control for training: WRS, FixNorm, weight decay, scale-shift-invariant regularizer.

Every method is a :class:`Regularizer` driven by the trainer (see ``base.py``)::

    reg = build_regularizer(RegularizationConfig(kind="wrs"), example_input=x[:2])
    reg.setup(model)
"""

from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.config import REGULARIZERS, RegularizationConfig, build_regularizer
from bnn_nested.regularization.fixnorm import FixNorm
from bnn_nested.regularization.invariant import (
    InvariantRegularizer,
    chain_invariant_norm,
    residual_invariant_norm,
)
from bnn_nested.regularization.targets import (
    decay_parameters,
    find_classifier,
    find_norm_followed,
    trace_norm_followed,
    weight_layers,
)
from bnn_nested.regularization.weight_decay import WeightDecay
from bnn_nested.regularization.wrs import WeightRescaling

#: No penalty, no projection (the base class).
NoRegularization = Regularizer

__all__ = [
    "FixNorm",
    "InvariantRegularizer",
    "NoRegularization",
    "REGULARIZERS",
    "RegularizationConfig",
    "Regularizer",
    "WeightDecay",
    "WeightRescaling",
    "build_regularizer",
    "chain_invariant_norm",
    "decay_parameters",
    "find_classifier",
    "find_norm_followed",
    "residual_invariant_norm",
    "trace_norm_followed",
    "weight_layers",
]
