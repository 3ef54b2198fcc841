"""The norm-control factory: :func:`build_regularizer` from a :class:`~bnn_nested.config.RegularizationConfig`.

One flat pydantic model: ``kind`` picks the method, the other fields are its options. Unknown keys
are rejected, and so is setting an option that the chosen ``kind`` does not use to a non-default
value (fail loudly: ``granularity="layer"`` with ``kind="weight_decay"`` would otherwise be
silently ignored; a full ``model_dump()`` with defaults still validates).

Which fields each kind reads:

============== =========================================================================
kind           fields
============== =========================================================================
wrs            granularity, target, every, other_weight_decay, include, exclude
fixnorm        granularity, classifier_norm, classifier_granularity, classifier,
               other_weight_decay, include, exclude
weight_decay   weight_decay, mode, exclude_bias_and_norm, exclude
invariant      coefficient, variant, blocks, include, exclude
none           (nothing)
============== =========================================================================

Example::

    cfg = RegularizationConfig(kind="fixnorm", classifier_norm=2.0)
    reg = build_regularizer(cfg, example_input=x[:2]); reg.setup(model)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bnn_nested.config import FIELDS_OF_KIND, RegularizationConfig
from bnn_nested.registry import Registry
from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.fixnorm import FixNorm
from bnn_nested.regularization.invariant import InvariantRegularizer
from bnn_nested.regularization.weight_decay import WeightDecay
from bnn_nested.regularization.wrs import WeightRescaling

#: kind -> builder(cfg, example_input) -> Regularizer
REGULARIZERS: Registry[Callable[..., Regularizer]] = Registry(
    "norm-control method", field="regularization.kind"
)


def _by_field_names(cls: type[Regularizer]) -> Callable[..., Regularizer]:
    """Builder passing the kind's config fields (:data:`~bnn_nested.config.FIELDS_OF_KIND`) as the
    keyword arguments of the same names, plus ``example_input``."""

    def build(cfg: RegularizationConfig, example_input) -> Regularizer:
        kwargs = {f: getattr(cfg, f) for f in sorted(FIELDS_OF_KIND[cfg.kind])}
        return cls(**kwargs, example_input=example_input)

    return build


REGULARIZERS.register("wrs", _by_field_names(WeightRescaling))
REGULARIZERS.register("fixnorm", _by_field_names(FixNorm))


@REGULARIZERS.register("weight_decay")
def _weight_decay(cfg: RegularizationConfig, example_input) -> Regularizer:
    return WeightDecay(
        coefficient=cfg.weight_decay,
        mode=cfg.mode,
        exclude_bias_and_norm=cfg.exclude_bias_and_norm,
        exclude=cfg.exclude,
    )


@REGULARIZERS.register("invariant")
def _invariant(cfg: RegularizationConfig, example_input) -> Regularizer:
    return InvariantRegularizer(
        coefficient=cfg.coefficient,
        variant=cfg.variant,
        include=cfg.include,
        exclude=cfg.exclude,
        blocks=cfg.blocks,
    )


@REGULARIZERS.register("none")
def _none(cfg: RegularizationConfig, example_input) -> Regularizer:
    return Regularizer()


def build_regularizer(
    cfg: RegularizationConfig, example_input: torch.Tensor | tuple | None = None
) -> Regularizer:
    """The :class:`Regularizer` described by ``cfg``.

    Args:
        cfg: the configuration.
        example_input: a small batch used by wrs / fixnorm to find norm-followed weights
            (can also be given later to ``setup(model, example_input)``).
    """
    return REGULARIZERS[cfg.kind](cfg, example_input)
