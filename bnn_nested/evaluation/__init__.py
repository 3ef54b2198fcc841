"""Evaluation at every width: metrics, OOD scores, Monte-Carlo prediction, reports, and acting on
uncertainty (temperature scaling, conformal sets, selective prediction).

``from bnn_nested.evaluation import evaluate, predict`` gives the functions (their modules are
:mod:`~bnn_nested.evaluation.report` and :mod:`~bnn_nested.evaluation.prediction`)."""

from __future__ import annotations

from bnn_nested.evaluation.calibration import (
    apply_temperature,
    calibrated_predict,
    fit_temperature,
    load_temperatures,
    save_temperatures,
    temperature_for,
)
from bnn_nested.evaluation.conformal import conformal_sets, nested_conformal_sets, prediction_sets
from bnn_nested.evaluation.metrics import (
    accuracy,
    adaptive_ece,
    brier,
    classification_report,
    ece,
    mce,
    mean_probs,
    mutual_information,
    nll,
    predictive_entropy,
    reliability_data,
)
from bnn_nested.evaluation.ood import SCORES, compute_score, ood_metrics, register_score
from bnn_nested.evaluation.prediction import predict, predict_loader
from bnn_nested.evaluation.report import Report, evaluate, evaluate_widths, make_ood_sets
from bnn_nested.evaluation.selective import aurc, eaurc, risk_coverage, selective_score

__all__ = [
    "Report",
    "SCORES",
    "accuracy",
    "adaptive_ece",
    "apply_temperature",
    "aurc",
    "brier",
    "calibrated_predict",
    "classification_report",
    "compute_score",
    "conformal_sets",
    "eaurc",
    "ece",
    "evaluate",
    "evaluate_widths",
    "fit_temperature",
    "load_temperatures",
    "make_ood_sets",
    "mce",
    "mean_probs",
    "mutual_information",
    "nested_conformal_sets",
    "nll",
    "ood_metrics",
    "predict",
    "predict_loader",
    "prediction_sets",
    "predictive_entropy",
    "register_score",
    "reliability_data",
    "risk_coverage",
    "save_temperatures",
    "selective_score",
    "temperature_for",
]
