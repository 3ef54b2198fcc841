"""Nested model zoo and the string registry used by configs."""

from bnn_nested.models.mlp import NestedMLP
from bnn_nested.models.registry import MODELS, build_model, register_model

__all__ = ["MODELS", "NestedMLP", "build_model", "register_model"]
