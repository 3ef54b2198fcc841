"""Configuration of the norm-control method and its factory.

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

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bnn_nested.regularization.base import Regularizer
from bnn_nested.regularization.fixnorm import FixNorm
from bnn_nested.regularization.invariant import InvariantRegularizer
from bnn_nested.regularization.weight_decay import WeightDecay
from bnn_nested.regularization.wrs import WeightRescaling

RegularizationKind = Literal["wrs", "fixnorm", "weight_decay", "invariant", "none"]

_FIELDS_OF_KIND: dict[str, frozenset[str]] = {
    "wrs": frozenset(
        {"granularity", "target", "every", "other_weight_decay", "include", "exclude"}
    ),
    "fixnorm": frozenset(
        {
            "granularity",
            "classifier_norm",
            "classifier_granularity",
            "classifier",
            "other_weight_decay",
            "include",
            "exclude",
        }
    ),
    "weight_decay": frozenset({"weight_decay", "mode", "exclude_bias_and_norm", "exclude"}),
    "invariant": frozenset({"coefficient", "variant", "blocks", "include", "exclude"}),
    "none": frozenset(),
}


class RegularizationConfig(BaseModel):
    """Norm-control method and its options (docs/METHODS.md#norm-control); see the module table."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: RegularizationKind = Field(
        "wrs", description="wrs | fixnorm | weight_decay | invariant | none"
    )
    # wrs / fixnorm
    granularity: Literal["filter", "layer"] = Field(
        "filter", description="norm per output filter or per whole weight tensor (wrs, fixnorm)"
    )
    target: Literal["unit", "initial"] = Field(
        "unit", description="wrs: rescale to norm 1 or to the norms recorded at setup"
    )
    every: int = Field(1, ge=1, description="wrs: rescale after steps that are multiples of this")
    other_weight_decay: float = Field(
        5e-4,
        ge=0,
        description="wrs/fixnorm: coupled decay of weights not followed by normalization",
    )
    classifier_norm: float = Field(1.0, gt=0, description="fixnorm: fixed classifier norm")
    classifier_granularity: Literal["per_class", "matrix"] = Field(
        "per_class", description="fixnorm: norm of each class row or of the whole matrix"
    )
    classifier: str | None = Field(
        None, description="fixnorm: classifier module name (default: last nn.Linear)"
    )
    # weight_decay
    weight_decay: float = Field(5e-4, ge=0, description="weight_decay: coefficient wd")
    mode: Literal["coupled", "decoupled"] = Field(
        "coupled", description="weight_decay: L2 gradient (SGD) or AdamW-style decoupled"
    )
    exclude_bias_and_norm: bool = Field(
        True, description="weight_decay: skip biases and normalization affine parameters"
    )
    # invariant
    coefficient: float = Field(1e-4, ge=0, description="invariant: penalty coefficient")
    variant: Literal["chain", "residual"] = Field(
        "chain", description="invariant: chain of layers or product over residual blocks"
    )
    blocks: list[list[str]] | None = Field(
        None, description="invariant/residual: module names per block (default: model hook)"
    )
    # shared
    include: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names to add / select"
    )
    exclude: list[str] = Field(
        default_factory=list, description="fnmatch patterns of module names to leave alone"
    )

    @model_validator(mode="after")
    def _only_fields_of_kind(self) -> RegularizationConfig:
        fields = type(self).model_fields
        stray = sorted(
            f
            for f in self.model_fields_set - _FIELDS_OF_KIND[self.kind] - {"kind"}
            if getattr(self, f) != fields[f].get_default(call_default_factory=True)
        )
        if stray:
            raise ValueError(f"fields {stray} do not apply to kind={self.kind!r}")
        if self.blocks is not None and any(len(b) == 0 for b in self.blocks):
            raise ValueError("blocks: every block needs at least one module name")
        return self


def build_regularizer(
    cfg: RegularizationConfig, example_input: torch.Tensor | tuple | None = None
) -> Regularizer:
    """The :class:`Regularizer` described by ``cfg``.

    Args:
        cfg: the configuration.
        example_input: a small batch used by wrs / fixnorm to find norm-followed weights
            (can also be given later to ``setup(model, example_input)``).
    """
    if cfg.kind == "wrs":
        return WeightRescaling(
            granularity=cfg.granularity,
            target=cfg.target,
            every=cfg.every,
            other_weight_decay=cfg.other_weight_decay,
            include=cfg.include,
            exclude=cfg.exclude,
            example_input=example_input,
        )
    if cfg.kind == "fixnorm":
        return FixNorm(
            granularity=cfg.granularity,
            classifier_norm=cfg.classifier_norm,
            classifier_granularity=cfg.classifier_granularity,
            classifier=cfg.classifier,
            other_weight_decay=cfg.other_weight_decay,
            include=cfg.include,
            exclude=cfg.exclude,
            example_input=example_input,
        )
    if cfg.kind == "weight_decay":
        return WeightDecay(
            coefficient=cfg.weight_decay,
            mode=cfg.mode,
            exclude_bias_and_norm=cfg.exclude_bias_and_norm,
            exclude=cfg.exclude,
        )
    if cfg.kind == "invariant":
        return InvariantRegularizer(
            coefficient=cfg.coefficient,
            variant=cfg.variant,
            include=cfg.include,
            exclude=cfg.exclude,
            blocks=cfg.blocks,
        )
    return Regularizer()
