"""Nested layers, ordering units and the nested-model base class."""

from bnn_nested.nn.batchnorm import NestedBatchNorm1d, NestedBatchNorm2d
from bnn_nested.nn.model import NestedModel, Width
from bnn_nested.nn.nested import NestedConv2d, NestedLinear, NestedMixin, active_param_count
from bnn_nested.nn.ordering_unit import OrderingUnit, active_groups, group_size, prior_logits

__all__ = [
    "NestedBatchNorm1d",
    "NestedBatchNorm2d",
    "NestedConv2d",
    "NestedLinear",
    "NestedMixin",
    "NestedModel",
    "OrderingUnit",
    "Width",
    "active_groups",
    "active_param_count",
    "group_size",
    "prior_logits",
]
