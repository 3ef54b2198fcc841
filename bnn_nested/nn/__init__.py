"""Gaussian-weight layers, width-calibrated batch norm, ordering units and the nested-model base class."""

from bnn_nested.nn.batchnorm import NestedBatchNorm1d, NestedBatchNorm2d, recalibrate_bn
from bnn_nested.nn.bayes import sparse_vd_kl
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import (
    WEIGHT_KINDS,
    NestedConv2d,
    NestedLinear,
    NestedMixin,
    set_weight_noise,
)
from bnn_nested.nn.ordering_unit import OrderingUnit, active_groups, group_size, prior_logits

__all__ = [
    "WEIGHT_KINDS",
    "NestedBatchNorm1d",
    "NestedBatchNorm2d",
    "NestedConv2d",
    "NestedLinear",
    "NestedMixin",
    "NestedModel",
    "OrderingUnit",
    "Width",
    "active_groups",
    "recalibrate_bn",
    "group_size",
    "prior_logits",
    "set_weight_noise",
    "sparse_vd_kl",
]
