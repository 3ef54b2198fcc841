"""Temperature scaling per width (Guo et al. 2017), fitted on the MC-averaged prediction.

One temperature ``T_w > 0`` per deployed width ``w``, in one of two modes
(docs/METHODS.md#temperature-scaling-per-width):

* ``per_sample`` (Laves et al. 2019): ``T`` divides the logits of **every Monte-Carlo sample
  before the softmax**, and the tempered samples are then averaged,
  ``p̄_T(y | x) = mean_s softmax(z_s / T)_y``;
* ``pooled`` (Rahaman & Thiery, NeurIPS 2021): ``T`` tempers the averaged predictive itself,
  ``p̄_T(y | x) = softmax(log p̄ / T)_y`` with ``p̄ = mean_s softmax(z_s)``; the result is one
  distribution, returned as a single sample ``(1, B, C)``.

For one sample (``S = 1``, e.g. a deterministic export: ``logits / T`` as its final step) the two
coincide. :func:`predict` returns probabilities, not logits; since
``softmax(log p_s / T) = softmax(z_s / T)`` (log-softmax differs from the logits by a per-sample
constant), :func:`apply_temperature` works on probabilities. Probabilities that underflowed to 0 are
clamped to the smallest normal float of their dtype before the log.

**A temperature belongs to the number of samples it was fitted with**: the same ``T`` is not the
right one at another ``S`` (a mixture of 8 tempered softmaxes is less confident than one). A fitted
temperature is a :class:`Temperature`, a ``float`` that remembers its ``mode`` and ``samples``;
:func:`apply_temperature` uses its mode and warns (once per pair of sample counts) when it is
applied to a prediction with another number of samples.

``T`` minimises the validation NLL ``-mean_i log p̄_T(y_i | x_i)``: a grid of 61 values of ``log T``
on ``[log 0.05, log 20]``, then golden-section search on the bracket around the grid's best point
(``|Δ log T| < 1e-7``). ``T = 1`` is also a candidate, so the fitted temperature never raises the
validation NLL.

In a run directory the temperatures live in ``calibration/temperature.json`` (keyed by width, with
the checkpoint step, the mode and the number of MC samples they were fitted with); ``evaluate``,
``select``, the cascade, :meth:`~bnn_nested.runs.loaded.LoadedRun.predict` and export read them from
there.

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
from bnn_nested.evaluation.prediction import predict, predict_loader
from bnn_nested.io import atomic_write_json

__all__ = [
    "DEFAULT_TEMPERATURE_MODE",
    "TEMPERATURE_FILE",
    "TEMPERATURE_MODES",
    "Temperature",
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
#: How a temperature acts on ``S`` Monte-Carlo samples (module docstring).
TEMPERATURE_MODES: tuple[str, ...] = ("per_sample", "pooled")
#: The mode :func:`fit_temperature` and :func:`fit_run_temperatures` use unless told otherwise.
DEFAULT_TEMPERATURE_MODE = "per_sample"
#: ``(mode, fitted S, used S)`` already warned about (one warning each per process).
_WARNED: set[tuple[str, int, int]] = set()


def _check_mode(mode: Any) -> str:
    if mode not in TEMPERATURE_MODES:
        raise ValueError(
            f"temperature_mode must be one of {', '.join(TEMPERATURE_MODES)}; got {mode!r}"
        )
    return mode


class Temperature(float):
    """A fitted temperature: the ``float`` ``T`` with the ``mode`` and the number of Monte-Carlo
    ``samples`` it was fitted with (``None``: unknown). Arithmetic on it gives plain floats.

    Example:
        >>> t = Temperature(1.7, "pooled", 8)
        >>> float(t), t.mode, t.samples
        (1.7, 'pooled', 8)
    """

    mode: str
    samples: int | None

    def __new__(cls, value: float, mode: str = "per_sample", samples: int | None = None):
        obj = super().__new__(cls, value)
        obj.mode = _check_mode(mode)
        obj.samples = None if samples is None else int(samples)
        return obj

    def __reduce__(self):
        return (Temperature, (float(self), self.mode, self.samples))

    def __repr__(self) -> str:
        return f"Temperature({float(self)!r}, mode={self.mode!r}, samples={self.samples!r})"


def width_key(width: float) -> str:
    """The JSON key of a width (``0.25 -> "0.25"``), as in ``report.json``."""
    return f"{float(width):g}"


def _log_probs(probs: Tensor) -> Tensor:
    p = probs if probs.ndim == 3 else probs.unsqueeze(0)
    return p.double().clamp_min(torch.finfo(probs.dtype).tiny).log()


def apply_temperature(probs: Tensor, temperature: float, mode: str | None = None) -> Tensor:
    """Tempered probabilities: ``softmax(log p_s / T)`` per MC sample (mode ``per_sample``, same
    shape) or ``softmax(log mean_s p_s / T)`` (mode ``pooled``: ``(1, B, C)`` for ``(S, B, C)``
    input, ``(B, C)`` for ``(B, C)``); same dtype.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` probabilities (e.g. from :func:`predict`).
        temperature: ``T > 0``; ``T = 1`` returns ``probs`` unchanged. A :class:`Temperature`
            brings its own mode, and a warning (once per pair of sample counts) when ``probs``
            holds another number of samples than it was fitted with.
        mode: ``per_sample`` or ``pooled``; default: the temperature's own mode (``per_sample`` for
            a plain number).

    Example:
        >>> apply_temperature(torch.tensor([[0.8, 0.2]]), 2.0)  # softmax(log p / 2): [[2/3, 1/3]]
        tensor([[0.6667, 0.3333]])
    """
    if (
        not (isinstance(temperature, (int, float)) and math.isfinite(temperature))
        or temperature <= 0
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    mode = _check_mode(mode if mode is not None else getattr(temperature, "mode", "per_sample"))
    fitted = getattr(temperature, "samples", None)
    used = probs.shape[0] if probs.ndim == 3 else 1
    if fitted is not None and fitted != used and temperature != 1.0:
        _warn_samples(mode, fitted, used)
    if temperature == 1.0:
        return probs
    logp = _log_probs(probs)
    if mode == "pooled":
        logp = torch.logsumexp(logp, 0, keepdim=True) - math.log(logp.shape[0])
    out = torch.softmax(logp / float(temperature), -1).to(probs.dtype)
    return out if probs.ndim == 3 else out.squeeze(0)


def _warn_samples(mode: str, fitted: int, used: int) -> None:
    if (mode, fitted, used) in _WARNED:
        return
    _WARNED.add((mode, fitted, used))
    warnings.warn(
        f"temperature fitted with {fitted} Monte-Carlo sample(s) applied to a prediction with "
        f"{used}: it calibrates only the sample count it was fitted at "
        f"(docs/METHODS.md#temperature-scaling-per-width); predict with samples={fitted} or refit "
        f"with --samples {used} --calibrate temperature",
        UserWarning,
        stacklevel=3,
    )


def _nll_at(logp: Tensor, targets: Tensor, log_t: float) -> float:
    """``-mean_i log mean_s softmax(logp_s / T)_{y_i}`` in float64 (logsumexp over samples)."""
    lsm = torch.log_softmax(logp / math.exp(log_t), -1)  # (S, N, C)
    picked = lsm.gather(2, targets.view(1, -1, 1).expand(lsm.shape[0], -1, 1)).squeeze(2)
    log_mean = torch.logsumexp(picked, 0) - math.log(lsm.shape[0])
    return float(-log_mean.mean())


def _mode_log_probs(p: Tensor, mode: str) -> Tensor:
    """``log p_s`` (``per_sample``, ``(S, N, C)``) or ``log mean_s p_s`` (``pooled``, ``(1, N, C)``)."""
    logp = _log_probs(p)
    if mode == "pooled":
        return torch.logsumexp(logp, 0, keepdim=True) - math.log(logp.shape[0])
    return logp


def temperature_nll(
    probs: Tensor, targets: Tensor, temperature: float, mode: str = "per_sample"
) -> float:
    """Validation NLL of the MC-averaged prediction at temperature ``T`` in ``mode`` (what the fit
    minimises)."""
    p = _check_probs(probs)
    t = _check_targets(targets, p.shape[-2], p.shape[-1])
    return _nll_at(_mode_log_probs(p, _check_mode(mode)), t, math.log(temperature))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature (a :class:`Temperature`, with its mode and sample count) with the
    validation NLL before (``T = 1``) and after."""

    temperature: Temperature
    nll_before: float
    nll_after: float


def fit_temperature(
    probs: Tensor,
    targets: Tensor,
    bounds: tuple[float, float] = T_BOUNDS,
    mode: str = DEFAULT_TEMPERATURE_MODE,
) -> TemperatureFit:
    """The ``T`` minimising the NLL of ``mean_s softmax(log p_s / T)`` (``per_sample``) or of
    ``softmax(log mean_s p_s / T)`` (``pooled``); see the module docstring.

    Args:
        probs: ``(B, C)`` or ``(S, B, C)`` validation probabilities; targets: ``(B,)`` long.
        bounds: search range ``(T_min, T_max)``.
        mode: ``per_sample`` or ``pooled`` (:data:`TEMPERATURE_MODES`).

    Returns:
        :class:`TemperatureFit`; ``nll_after <= nll_before`` always (``T = 1`` is a candidate).

    Example::

        fit_temperature(val_probs, val_targets).temperature
    """
    lo, hi = bounds
    if not 0 < lo < 1 < hi:
        raise ValueError(f"bounds must satisfy 0 < T_min < 1 < T_max, got {bounds}")
    mode = _check_mode(mode)
    p = _check_probs(probs)
    t = _check_targets(targets, p.shape[-2], p.shape[-1])
    samples = p.shape[0] if p.ndim == 3 else 1
    logp = _mode_log_probs(p, mode)

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
        return TemperatureFit(Temperature(1.0, mode, samples), before, before)
    return TemperatureFit(Temperature(math.exp(best_u), mode, samples), before, best)


# --------------------------------------------------------------------------- run directory


def save_temperatures(
    run_dir: str | Path,
    fits: Mapping[float, TemperatureFit],
    step: int,
    samples: int,
    split: str = "val",
) -> Path:
    """Write ``run_dir/calibration/temperature.json`` atomically.

    Layout: ``{"method": "temperature", "mode": "per_sample", "step": .., "samples": ..,
    "split": "val", "widths": {"0.25": {"temperature": .., "nll_before": .., "nll_after": ..}}}``;
    ``mode`` is the fits' (they must share one).
    """
    modes = {getattr(f.temperature, "mode", "per_sample") for f in fits.values()}
    if len(modes) > 1:
        raise ValueError(f"temperatures of one run must share one mode; got {sorted(modes)}")
    doc = {
        "method": "temperature",
        "mode": modes.pop() if modes else DEFAULT_TEMPERATURE_MODE,
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
    """Temperatures stored in a run directory (``{}`` when none), as :class:`Temperature` values
    carrying the file's ``mode`` (``per_sample`` for files written before modes existed) and
    ``samples``.

    With ``step`` (the run checkpoint's step), temperatures fitted on another checkpoint are
    ignored with a warning (refit with ``bnn-nested evaluate RUN --calibrate temperature``).
    """
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return {}
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        samples = doc.get("samples")
        samples = None if samples is None else int(samples)
        mode = doc.get("mode", "per_sample")
        if mode not in TEMPERATURE_MODES:
            raise ValueError(f"mode must be one of {', '.join(TEMPERATURE_MODES)}, got {mode!r}")
        temps = {
            float(w): Temperature(float(v["temperature"]), mode, samples)
            for w, v in doc["widths"].items()
        }
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
    """:func:`~bnn_nested.evaluation.prediction.predict` with ``T`` applied by
    :func:`apply_temperature` (in the temperature's mode): ``(S, B, C)`` probabilities, ``(1, B, C)``
    for a ``pooled`` temperature."""

    return apply_temperature(predict(model, x, width, samples, **kwargs), temperature)


def fit_run_temperatures(
    run,
    widths: Sequence[float],
    samples: int,
    batch_size: int = 512,
    out_dir: str | Path | None = None,
    mode: str = DEFAULT_TEMPERATURE_MODE,
) -> dict[float, TemperatureFit]:
    """Fit one temperature per width on ``run.splits.val`` (a :class:`LoadedRun`) in ``mode``; with
    ``out_dir`` also store them there (:func:`save_temperatures`, with the checkpoint step)."""
    _check_mode(mode)

    run.recalibrate_bn(list(widths))
    loader = DataLoader(run.splits.val, batch_size=batch_size)
    fits = {}
    for w in widths:
        probs, targets = predict_loader(run.model, loader, w, samples)
        fits[float(w)] = fit_temperature(probs, targets, mode=mode)
    if out_dir is not None:
        save_temperatures(out_dir, fits, int(run.checkpoint.get("step", 0)), samples)
    return fits
