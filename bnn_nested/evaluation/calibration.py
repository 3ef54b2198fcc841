"""Temperature scaling per width (Guo et al. 2017), fitted on the MC-averaged prediction.

One temperature ``T_w > 0`` per deployed width ``w``. It divides the logits of **every Monte-Carlo
sample before the softmax**, and the tempered samples are then averaged
(docs/METHODS.md#temperature-scaling-per-width):

    p̄_T(y | x) = mean_s softmax(z_s / T)_y,

so a deterministic export (one sample, the mean network) applies the same operation: ``logits / T``
as its final step. :func:`predict` returns probabilities, not logits; since
``softmax(log p_s / T) = softmax(z_s / T)`` (log-softmax differs from the logits by a per-sample
constant), :func:`apply_temperature` works on probabilities and nothing in
:mod:`bnn_nested.evaluation.predict` changes. Probabilities that underflowed to 0 are clamped to the
smallest normal float of their dtype before the log.

``T`` minimises the validation NLL ``-mean_i log p̄_T(y_i | x_i)``: a grid of 61 values of ``log T``
on ``[log 0.05, log 20]``, then golden-section search on the bracket around the grid's best point
(``|Δ log T| < 1e-7``). ``T = 1`` is also a candidate, so the fitted temperature never raises the
validation NLL.

In a run directory the temperatures live in ``calibration/temperature.json`` (keyed by width, with
the checkpoint step and the number of MC samples they were fitted with); ``evaluate``, ``select``,
the cascade, :meth:`~bnn_nested.runs.run.LoadedRun.predict` and export read them from there.

Example::

    fit = fit_temperature(val_probs, val_targets)           # val_probs: (S, N, C)
    probs_cal = apply_temperature(test_probs, fit.temperature)
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from bnn_nested.evaluation.metrics import _check_probs, _check_targets
from bnn_nested.evaluation.predict import predict, predict_loader
from bnn_nested.io import atomic_write_json

__all__ = [
    "TEMPERATURE_FILE",
    "TemperatureFit",
    "apply_temperature",
    "calibrated_predict",
    "fit_temperature",
    "fit_run_temperatures",
    "load_temperatures",
    "save_temperatures",
    "temperature_nll",
    "width_key",
]

#: Where a run directory keeps its temperatures.
TEMPERATURE_FILE = "calibration/temperature.json"
#: Search range of the temperature.
T_BOUNDS: tuple[float, float] = (0.05, 20.0)
_GRID = 61
_TOL = 1e-7


def width_key(width: float) -> str:
    """The JSON key of a width (``0.25 -> "0.25"``), as in ``report.json``."""
    return f"{float(width):g}"


def _log_probs(probs: Tensor) -> Tensor:
    p = probs if probs.ndim == 3 else probs.unsqueeze(0)
    return p.double().clamp_min(torch.finfo(probs.dtype).tiny).log()


def apply_temperature(probs: Tensor, temperature: float) -> Tensor:
    """Tempered probabilities ``softmax(log p_s / T)`` per MC sample, same shape and dtype.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities (e.g. from :func:`predict`).
        temperature: ``T > 0``; ``T = 1`` returns ``probs`` unchanged.

    Example:
        >>> apply_temperature(torch.tensor([[0.8, 0.2]]), 2.0)  # softmax(log p / 2): [[2/3, 1/3]]
        tensor([[0.6667, 0.3333]])
    """
    if (
        not (isinstance(temperature, (int, float)) and math.isfinite(temperature))
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature == 1.0:
        return probs
    out = torch.softmax(_log_probs(probs) / temperature, -1).to(probs.dtype)
    return out if probs.ndim == 3 else out.squeeze(0)


def _nll_at(logp: Tensor, targets: Tensor, log_t: float) -> float:
    """``-mean_i log mean_s softmax(logp_s / T)_{y_i}`` in float64 (logsumexp over samples)."""
    lsm = torch.log_softmax(logp / math.exp(log_t), -1)  # (S, N, C)
    picked = lsm.gather(2, targets.view(1, -1, 1).expand(lsm.shape[0], -1, 1)).squeeze(2)
    log_mean = torch.logsumexp(picked, 0) - math.log(lsm.shape[0])
    return float(-log_mean.mean())


def temperature_nll(probs: Tensor, targets: Tensor, temperature: float) -> float:
    """Validation NLL of the MC-averaged prediction at temperature ``T`` (what the fit minimises)."""
    p = _check_probs(probs)
    t = _check_targets(targets, p.shape[-2], p.shape[-1])
    return _nll_at(_log_probs(p), t, math.log(temperature))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature with the validation NLL before (``T = 1``) and after."""

    temperature: float
    nll_before: float
    nll_after: float


def fit_temperature(
    probs: Tensor, targets: Tensor, bounds: tuple[float, float] = T_BOUNDS
) -> TemperatureFit:
    """The ``T`` minimising the NLL of ``mean_s softmax(log p_s / T)`` (see module docstring).

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` validation probabilities; targets: ``(B,)`` long.
        bounds: search range ``(T_min, T_max)``.

    Returns:
        :class:`TemperatureFit`; ``nll_after <= nll_before`` always (``T = 1`` is a candidate).

    Example::

        fit_temperature(val_probs, val_targets).temperature
    """
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds must satisfy 0 < T_min < 1 < T_max, got {bounds}")
    p = _check_probs(probs)
    t = _check_targets(targets, p.shape[-2], p.shape[-1])
    logp = _log_probs(p)

    def f(u: float) -> float:
        return _nll_at(logp, t, u)

    grid = torch.linspace(math.log(lo), math.log(hi), _GRID).tolist()
    vals = [f(u) for u in grid]
    i = min(range(len(grid)), key=vals.__getitem__)
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    while b - a > _TOL:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    best_u, best = min([(grid[i], vals[i]), (c, fc), (d, fd)], key=lambda kv: kv[1])
    before = f(0.0)
    if before <= best:
        return TemperatureFit(1.0, before, before)
    return TemperatureFit(math.exp(best_u), before, best)


# --------------------------------------------------------------------------- run directory


def save_temperatures(
    run_dir: str | Path,
    fits: Mapping[float, TemperatureFit],
    step: int,
    samples: int,
    split: str = "val",
) -> Path:
    """Write ``run_dir/calibration/temperature.json`` atomically.

    Layout: ``{"method": "temperature", "step": .., "samples": .., "split": "val",
    "widths": {"0.25": {"temperature": .., "nll_before": .., "nll_after": ..}, ...}}``.
    """
    doc = {
        "method": "temperature",
        "step": int(step),
        "samples": int(samples),
        "split": split,
        "widths": {
            width_key(w): {
                "temperature": f.temperature,
                "nll_before": f.nll_before,
                "nll_after": f.nll_after,
            }
            for w, f in sorted(fits.items())
        },
    }
    return atomic_write_json(Path(run_dir) / TEMPERATURE_FILE, doc)


def load_temperatures(run_dir: str | Path, step: int | None = None) -> dict[float, float]:
    """Temperatures stored in a run directory (``{}`` when none).

    With ``step`` (the run checkpoint's step), temperatures fitted on another checkpoint are
    ignored with a warning (refit with ``bnn-nested evaluate RUN --calibrate temperature``).
    """
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return {}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        temps = {float(w): float(v["temperature"]) for w, v in doc["widths"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: unreadable temperature file ({err})") from None
    if step is not None and int(doc.get("step", -1)) != int(step):
        warnings.warn(
            f"{path}: fitted on checkpoint step {doc.get('step')}, the run is at step {step}; "
            "ignoring it (refit with --calibrate temperature)",
            stacklevel=2,
        )
        return {}
    return temps


def temperature_for(temperatures: Mapping[float, float] | None, width: float) -> float:
    """``T`` of ``width`` (1.0 when none was fitted for it)."""
    if not temperatures:
        return 1.0
    by_key = {width_key(w): t for w, t in temperatures.items()}
    return by_key.get(width_key(width), 1.0)


def calibrated_predict(
    model,
    x: Tensor,
    width: float,
    samples: int = 1,
    temperature: float = 1.0,
    **kwargs,
) -> Tensor:
    """:func:`~bnn_nested.evaluation.predict.predict` with every sample's logits divided by ``T``:
    ``(S, B, C)`` probabilities."""

    return apply_temperature(predict(model, x, width, samples, **kwargs), temperature)


def fit_run_temperatures(
    run,
    widths: Sequence[float],
    samples: int,
    batch_size: int = 512,
    out_dir: str | Path | None = None,
) -> dict[float, TemperatureFit]:
    """Fit one temperature per width on ``run.splits.val`` (a :class:`LoadedRun`); with
    ``out_dir`` also store them there (:func:`save_temperatures`, with the checkpoint step)."""

    run.recalibrate_bn(list(widths))
    loader = DataLoader(run.splits.val, batch_size=batch_size)
    fits = {}
    for w in widths:
        probs, targets = predict_loader(run.model, loader, w, samples)
        fits[float(w)] = fit_temperature(probs, targets)
    if out_dir is not None:
        save_temperatures(out_dir, fits, int(run.checkpoint.get("step", 0)), samples)
    return fits
