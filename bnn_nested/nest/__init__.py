"""Bring your own model: the width structure of any network and ``nestify``."""

from bnn_nested.nest.analysis import UnsupportedModelError, find_channel_dims
from bnn_nested.nest.attention import NestedMultiheadAttention, PrunedMultiheadAttention
from bnn_nested.nest.convert import UnorderedDimensionWarning, nestify, verify
from bnn_nested.nest.importance import (
    IMPORTANCES,
    check_plain_state,
    importance_scores,
    init_ordering_from_importance,
    load_plain_weights,
    order_by_importance,
    permute_dimension,
    read_plain_state,
)
from bnn_nested.nest.model import NestifiedModel
from bnn_nested.nest.slicing import plain_copy, sliced_cost, sliced_network
from bnn_nested.nest.structure import ChannelDim, Member, WidthStructure

__all__ = [
    "IMPORTANCES",
    "importance_scores",
    "init_ordering_from_importance",
    "check_plain_state",
    "load_plain_weights",
    "read_plain_state",
    "order_by_importance",
    "permute_dimension",
    "ChannelDim",
    "Member",
    "NestedMultiheadAttention",
    "NestifiedModel",
    "PrunedMultiheadAttention",
    "UnorderedDimensionWarning",
    "UnsupportedModelError",
    "WidthStructure",
    "find_channel_dims",
    "nestify",
    "plain_copy",
    "sliced_cost",
    "sliced_network",
    "verify",
]
