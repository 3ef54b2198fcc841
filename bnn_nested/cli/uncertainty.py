"""Options of ``bnn-nested evaluate`` that act on uncertainty: temperature scaling per
width, conformal prediction sets, selective prediction. Kept apart from ``cli/evaluate.py``.

``--calibrate temperature`` fits one temperature per width on the validation split, stores it in
``RUN/calibration/temperature.json`` and reports the metrics before (``raw/...``) and after;
without ``--calibrate`` stored temperatures are applied when present; ``--calibrate none`` ignores
them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bnn_nested.cli.common import UsageError, precheck_scores
from bnn_nested.config import SET_SCORES

CALIBRATE = ("temperature", "none")


def parse_alphas(text: str) -> list[float]:
    """``"0.05,0.1"`` -> ``[0.05, 0.1]``; ``"none"`` -> ``[]``; every alpha in (0, 1)."""
    if text.strip().lower() == "none":
        return []
    try:
        values = [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers in (0, 1) or 'none', got {text!r}"
        ) from None
    if not values or any(not 0.0 < v < 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every alpha must be in (0, 1), got {text!r}")
    return values


def add_arguments(e) -> None:
    e.add_argument(
        "--calibrate",
        choices=CALIBRATE,
        default=None,
        help="temperature: fit one temperature per width on the val split, store it in the run "
        "and report before/after; none: ignore stored temperatures (default: apply them if stored)",
    )
    e.add_argument(
        "--alpha",
        type=parse_alphas,
        default=None,
        help="conformal sets at level 1 - alpha, calibrated on val (default 0.1 with --split test; "
        "'none' to skip), e.g. 0.05,0.1",
    )
    e.add_argument(
        "--set-score",
        choices=SET_SCORES,
        default="thr",
        help="conformal score: thr (1 - p_y), aps, raps (default thr)",
    )
    e.add_argument(
        "--nested-sets",
        action="store_true",
        help="also report sets nested across widths (a wider width never returns a larger set)",
    )
    e.add_argument(
        "--selective-score",
        default="msp",
        help="uncertainty ranking of the risk-coverage curve / AURC: msp (1 - max p, default), "
        "entropy, mutual_information, expected_entropy, or one registered by a module in the "
        "run's imports",
    )


def check(args) -> None:
    """Bad combinations, before anything is read or written."""
    precheck_scores([args.selective_score], "--selective-score", args.allow_import, True)
    if args.alpha and args.split != "test":
        raise UsageError("--alpha: conformal sets are calibrated on val; use it with --split test")
    if args.selective_score == "mutual_information" and args.samples == 1:
        raise UsageError("--selective-score mutual_information needs --samples > 1")


def evaluate_kwargs(
    args, loaded, run_dir: Path, widths: list[float], samples: int
) -> tuple[dict[str, Any], list[str]]:
    """Keyword arguments for :func:`~bnn_nested.evaluation.report.evaluate` and lines to print."""
    from bnn_nested.evaluation.calibration import (  # deferred: imports torch; --help and usage errors stay fast
        TEMPERATURE_FILE,
        fit_run_temperatures,
    )
    from bnn_nested.evaluation.ood import (
        check_scores,  # deferred: imports torch; --help and usage errors stay fast
    )

    check_scores([args.selective_score], "--selective-score", probabilities=True)

    if args.selective_score == "mutual_information" and samples == 1:
        raise UsageError("--selective-score mutual_information needs --samples > 1")
    lines = []
    temps: dict[float, float] = {}
    no_val = not loaded.splits.has_val
    if no_val:
        why = f"{run_dir}: its data set {loaded.config.data.name!r} has no validation split"
        if args.calibrate == "temperature":
            raise UsageError(f"{why}; --calibrate temperature fits on it")
        if args.alpha:
            raise UsageError(f"{why}; --alpha: conformal sets are calibrated on it")
    if args.calibrate == "temperature":
        fits = fit_run_temperatures(
            loaded, widths, samples, loaded.config.data.eval_batch_size, out_dir=run_dir
        )
        temps = {w: f.temperature for w, f in fits.items()}
        lines.append(
            "temperature per width (fitted on val, NLL before -> after): "
            + ", ".join(
                f"{w:g}: T={f.temperature:.3f} ({f.nll_before:.4f} -> {f.nll_after:.4f})"
                for w, f in fits.items()
            )
        )
        lines.append(f"stored: {run_dir / TEMPERATURE_FILE}")
    elif args.calibrate is None:
        temps = loaded.temperatures()
        if temps:
            lines.append(
                f"applying stored temperatures ({run_dir / TEMPERATURE_FILE}; --calibrate none "
                "to ignore): " + ", ".join(f"{w:g}: {t:.3f}" for w, t in sorted(temps.items()))
            )
    alphas = args.alpha if args.alpha is not None else ([0.1] if args.split == "test" else [])
    if no_val and args.alpha is None:
        alphas = []
        lines.append("no validation split: conformal sets (calibrated on it) are not reported")
    kwargs = {
        "temperatures": temps or None,
        "alphas": alphas,
        "set_score": args.set_score,
        "nested_sets": args.nested_sets,
        "selective": args.selective_score,
    }
    return kwargs, lines
