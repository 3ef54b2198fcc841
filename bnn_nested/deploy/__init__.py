"""Deployment under a budget: cost profiles, width selection, export of a physically smaller
module (torch.export or ONNX), safe weights, per-layer allocation and the uncertainty cascade."""

from __future__ import annotations

from bnn_nested.deploy.cascade import Cascade, CascadeReport, cascade_report, choose_threshold
from bnn_nested.deploy.export import export_width, exported_param_count, fold_bn
from bnn_nested.deploy.onnx import OnnxMismatch, OnnxUnavailable, OrtModule, onnx_width
from bnn_nested.deploy.profile import WidthCost, profile_widths
from bnn_nested.deploy.runtime import (
    MicroBatched,
    compile_for_inference,
    inference_module,
    tune_micro_batch,
)
from bnn_nested.deploy.select import Candidate, Constraints, Selection, select_width
from bnn_nested.deploy.serialize import (
    UnsafeOrInvalidWeights,
    load_exported,
    load_width_weights,
    save_exported,
    save_width_weights,
)
from bnn_nested.deploy.timing import Timing, measure_latency, num_threads

__all__ = [
    "Candidate",
    "Cascade",
    "CascadeReport",
    "Constraints",
    "MicroBatched",
    "OnnxMismatch",
    "OnnxUnavailable",
    "OrtModule",
    "Selection",
    "Timing",
    "UnsafeOrInvalidWeights",
    "WidthCost",
    "cascade_report",
    "choose_threshold",
    "compile_for_inference",
    "export_width",
    "exported_param_count",
    "fold_bn",
    "inference_module",
    "load_exported",
    "load_width_weights",
    "measure_latency",
    "num_threads",
    "onnx_width",
    "profile_widths",
    "save_exported",
    "save_width_weights",
    "select_width",
    "tune_micro_batch",
]
