"""A trained nested model as a shareable directory: ``config.json`` + ``model.safetensors``.

Layout (the one Hugging Face uses, so the directory can be uploaded as it is)::

    DIR/model.safetensors   every tensor of model.state_dict(): weights, ordering-unit posteriors
                            and temperature buffers, BN running statistics and the batch-norm
                            statistics re-estimated per width (calib_channels/width/mean/var;
                            docs/METHODS.md#batch-norm-per-width)
    DIR/config.json         {"format": "bnn-nested-pretrained/1", "config": <the run's config>,
                             "input_shape": [..], "num_classes": N,
                             "temperatures": {"0.5": T, ..},  (one per width, fitted on val:
                                                docs/METHODS.md#temperature-scaling-per-width)
                             "temperature_mode": "per_sample", "temperature_samples": S,
                                                (how they were fitted; absent: per_sample, unknown)
                             "bn_calibrated_widths": [..], "weights_sha256": "..", "source": {..}}

**Loading runs no code from the directory**: ``config.json`` is read as JSON (bounded, regular file
only), ``model.safetensors`` is a JSON header plus raw tensor bytes (no pickle, unlike a ``.pt``
file), the architecture is built by bnn-nested from the config (a config naming ``model.name:
import``, which would import a module, is refused unless ``allow_import=True``), and the tensors
must match that architecture exactly (names and shapes) and the SHA-256 that ``config.json``
records. Nothing needs the training run or its data set.

These are functions, not ``NestedModel`` methods: ``NestedModel`` lives in :mod:`bnn_nested.nn`, a
low layer that knows nothing of configs, the model registry or run directories (all higher up);
:class:`Pretrained` bundles the model with what it needs and offers
:meth:`Pretrained.save_pretrained`.

Example::

    from_run("runs/demo").save_pretrained("shared/demo")       # bnn-nested export-weights
    pre = from_pretrained("shared/demo")                        # anywhere, no run needed
    probs = pre.predict(x, width=0.5)      # (S, B, C), calibrated; S = the temperature's own S,
                                           # else config.eval.samples
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from bnn_nested.config import Config, ConfigError, build_config, import_trusted
from bnn_nested.evaluation.calibration import (
    TEMPERATURE_MODES,
    Temperature,
    load_temperatures,
    temperature_for,
    width_key,
)
from bnn_nested.io import (
    JsonFileError,
    atomic_write,
    atomic_write_json,
    first_line,
    read_json,
    read_regular_file,
)
from bnn_nested.models import build_model
from bnn_nested.nn.batchnorm import nested_norms
from bnn_nested.nn.model import NestedModel
from bnn_nested.runs.calibrated import CalibratedPredictor
from bnn_nested.runs.runfiles import read_run_checkpoint
from bnn_nested.training.checkpoint import (
    CheckpointError,
    nonfinite_tensors,
)
from bnn_nested.training.samplers import build_sampler

__all__ = [
    "CONFIG_FILE",
    "PRETRAINED_FORMAT",
    "WEIGHTS_FILE",
    "Pretrained",
    "PretrainedError",
    "check_pretrained_out",
    "from_pretrained",
    "from_run",
    "save_pretrained",
]

#: ``format`` field of ``config.json`` (and of the safetensors header's metadata).
PRETRAINED_FORMAT = "bnn-nested-pretrained/1"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Largest weights file read (a wide VGG is a few hundred MB).
MAX_WEIGHTS_BYTES = 16 << 30


class PretrainedError(ValueError):
    """A pretrained directory that is refused: malformed, tampered or not matching its config."""


@dataclass
class Pretrained(CalibratedPredictor):
    """A trained nested model with its config, input shape, class count and temperatures;
    :meth:`~bnn_nested.runs.calibrated.CalibratedPredictor.predict` applies them."""

    model: NestedModel
    config: Config
    input_shape: tuple[int, ...]
    num_classes: int
    #: temperature per width (``{}``: none fitted; ``bnn-nested evaluate --calibrate temperature``);
    #: :class:`~bnn_nested.evaluation.calibration.Temperature` values know their mode and sample count
    temperatures: dict[float, float] = field(default_factory=dict)
    #: where it came from: ``{"step", "complete", "checkpoint_sha256"}`` of the run's checkpoint
    source: dict[str, Any] = field(default_factory=dict)

    def temperature(self, width: float) -> float:
        """``T`` of ``width`` (1.0 when none was fitted for it)."""
        return temperature_for(self.temperatures, width)

    def bn_calibrated_widths(self) -> list[float]:
        """Global widths whose batch-norm statistics were re-estimated (stored in the weights)."""
        keys = {float(k) for bn in nested_norms(self.model) for k in bn.calib_width.tolist()}
        return sorted(k for k in keys if 0.0 < k <= 1.0)

    def save_pretrained(self, out_dir: str | Path, overwrite: bool = False) -> Path:
        """:func:`save_pretrained` of this model."""
        return save_pretrained(self, out_dir, overwrite)


# --------------------------------------------------------------------------- from a run


def from_run(
    run_dir: str | Path, device: str | torch.device = "cpu", allow_import: bool = False
) -> Pretrained:
    """The trained model of a run directory (its checkpoint, read with ``weights_only``, and its
    stored temperatures); the data set is not loaded. A run whose config imports modules is
    refused unless ``allow_import`` (:func:`~bnn_nested.runs.build.check_run_imports`).

    Raises:
        FileNotFoundError: no such directory.
        CheckpointError: no checkpoint yet, or a checkpoint that is corrupt, holds code or does not
            match its config (one line).
    """
    run_dir = Path(run_dir)
    path, state, digest, cfg = read_run_checkpoint(
        run_dir, ("config", "model", "meta"), allow_import=allow_import
    )
    if not isinstance(state["model"], dict):
        raise CheckpointError(f"{path}: incompatible checkpoint (model is not a state dict)")
    try:
        shape = tuple(int(d) for d in state["meta"]["input_shape"])
        num_classes = int(state["meta"]["num_classes"])
    except (TypeError, KeyError, ValueError):  # Python's text ("('meta')") would not say what
        raise CheckpointError(
            f"{path}: incompatible checkpoint (meta: needs input_shape, a list of sizes, and "
            "num_classes, an integer)"
        ) from None
    model = _build(cfg, shape, num_classes)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: incompatible checkpoint ({first_line(err)})") from None
    step = state.get("step")
    source = {
        "step": step if isinstance(step, int) else -1,
        "complete": bool(state.get("complete", False)),
        "checkpoint_sha256": digest,
    }
    temps = load_temperatures(run_dir, step if isinstance(step, int) else None)
    return Pretrained(model.to(device).eval(), cfg, shape, num_classes, temps, source)


def _build(cfg: Config, shape: tuple[int, ...], num_classes: int) -> NestedModel:
    with torch.random.fork_rng():  # building a model draws random initial weights
        return build_model(
            cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, num_classes
        )


# --------------------------------------------------------------------------- save


def check_pretrained_out(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Refuse ``out_dir`` unless it does not exist, is an empty directory, or (with ``overwrite``)
    holds only the files :func:`save_pretrained` writes. Touches nothing."""
    if str(out_dir).strip() == "":
        raise FileExistsError("--out: empty path; name the directory to create")
    out = Path(out_dir)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists():
        entries = sorted(p.name for p in out.iterdir())
        ours = {WEIGHTS_FILE, CONFIG_FILE}
        if entries and not overwrite:
            raise FileExistsError(f"{out} already exists and is not empty; pass --overwrite")
        foreign = [e for e in entries if e not in ours]
        if foreign:
            raise FileExistsError(
                f"{out} holds files export-weights did not write ({', '.join(foreign[:5])}); "
                "choose another --out"
            )
    return out


def save_pretrained(pretrained: Pretrained, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` and ``out_dir/config.json`` (each atomically, the
    weights first); read them back with :func:`from_pretrained`. Returns ``out_dir``.

    ``out_dir`` must not exist or be empty; ``overwrite`` replaces a directory written here before
    (:func:`check_pretrained_out`). Everything is checked before anything is written.
    """
    out = check_pretrained_out(out_dir, overwrite)
    state = pretrained.model.state_dict()
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"model state holds non-tensor entries: {', '.join(not_tensors[:3])}")
    bad = nonfinite_tensors(state)
    if bad:
        raise ValueError(f"non-finite weights (NaN/Inf) in {', '.join(bad[:3])}; not saved")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    data = safetensors.torch.save(tensors, metadata={"format": PRETRAINED_FORMAT})
    temps = {width_key(w): float(t) for w, t in sorted(pretrained.temperatures.items())}
    _check_temperatures(temps, out)
    how = {
        (getattr(t, "mode", "per_sample"), getattr(t, "samples", None))
        for t in pretrained.temperatures.values()
    }
    if len(how) > 1:
        raise ValueError(
            f"temperatures fitted in different modes or sample counts {sorted(how, key=str)}; "
            "refit them together (bnn-nested evaluate --calibrate temperature)"
        )
    mode, fitted = how.pop() if how else ("per_sample", None)
    doc = {
        "format": PRETRAINED_FORMAT,
        "config": pretrained.config.to_dict(),
        "input_shape": [int(d) for d in pretrained.input_shape],
        "num_classes": int(pretrained.num_classes),
        "temperatures": temps,
        "temperature_mode": mode,
        "temperature_samples": fitted,
        "bn_calibrated_widths": pretrained.bn_calibrated_widths(),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "source": dict(pretrained.source),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / WEIGHTS_FILE, lambda f: f.write(data))
    atomic_write_json(out / CONFIG_FILE, doc)
    return out


def _check_temperatures(
    temps: Any, where: Path, mode: Any = "per_sample", samples: Any = None
) -> dict[float, float]:
    if mode not in TEMPERATURE_MODES:
        raise PretrainedError(
            f"{where}: temperature_mode must be one of {', '.join(TEMPERATURE_MODES)}, got "
            f"{str(mode)[:20]!r}"
        )
    if samples is not None and (
        isinstance(samples, bool) or not isinstance(samples, int) or samples < 1
    ):
        raise PretrainedError(
            f"{where}: temperature_samples must be an integer >= 1 or null, got {str(samples)[:20]!r}"
        )
    if not isinstance(temps, dict):
        raise PretrainedError(f"{where}: temperatures must be a mapping width -> temperature")
    out = {}
    for k, v in temps.items():
        try:
            w, t = float(k), float(v)
        except (TypeError, ValueError):
            w, t = float("nan"), float("nan")
        if isinstance(v, bool) or not (0.0 < w <= 1.0 and math.isfinite(t) and t > 0):
            raise PretrainedError(
                f"{where}: temperatures: width {str(k)[:20]!r} -> {str(v)[:20]!r} is not a width "
                "in (0, 1] with a temperature > 0"
            )
        out[w] = Temperature(t, mode, samples)
    return out


# --------------------------------------------------------------------------- load


def from_pretrained(
    path: str | Path, device: str | torch.device = "cpu", allow_import: bool = False
) -> Pretrained:
    """Load a directory written by :func:`save_pretrained`; runs no code from it.

    Raises:
        FileNotFoundError: no such directory, or a file of it missing.
        PretrainedError: a malformed ``config.json``, a weights file that is corrupt, does not
            match the SHA-256 recorded in ``config.json`` (tampered) or the architecture of the
            config, non-finite weights, or a config naming ``model.name: import`` without
            ``allow_import`` (one line naming the file).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: pretrained directory not found")
    cfg_path, w_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    try:
        doc = read_json(cfg_path, "pretrained config")
    except JsonFileError as err:
        raise PretrainedError(str(err)) from None
    if not isinstance(doc, dict) or doc.get("format") != PRETRAINED_FORMAT:
        raise PretrainedError(
            f"{cfg_path}: not a bnn-nested pretrained config (format {PRETRAINED_FORMAT!r} expected)"
        )
    try:
        cfg = build_config(doc["config"])
        shape = tuple(int(d) for d in doc["input_shape"])
        num_classes = int(doc["num_classes"])
        digest = str(doc["weights_sha256"])
        source = dict(doc.get("source", {}))
        ok = (
            0 < len(shape) <= 4
            and all(0 < d <= 4096 for d in shape)
            and 0 < num_classes <= 100_000
            and isinstance(doc["input_shape"], list)
        )
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise PretrainedError(
            f"{cfg_path}: malformed ({first_line(err, 150, repr(err))})"
        ) from None
    if not ok:
        raise PretrainedError(f"{cfg_path}: malformed (input_shape or num_classes out of range)")
    temps = _check_temperatures(
        doc.get("temperatures", {}),
        cfg_path,
        doc.get("temperature_mode", "per_sample"),
        doc.get("temperature_samples"),
    )
    import_trusted(cfg, allow_import, str(cfg_path), PretrainedError)
    data = read_regular_file(
        w_path, "weights file", MAX_WEIGHTS_BYTES, PretrainedError, "not found"
    )
    if hashlib.sha256(data).hexdigest() != digest:
        raise PretrainedError(
            f"{w_path}: SHA-256 differs from the one {CONFIG_FILE} records (modified or replaced "
            "after it was written); refused"
        )
    try:
        state = safetensors.torch.load(data)
    except Exception as err:  # safetensors' own error type: a malformed header or body
        detail = first_line(err, 150, repr(err))
        raise PretrainedError(f"{w_path}: corrupt safetensors file ({detail})") from None
    bad = nonfinite_tensors(state)
    if bad:
        raise PretrainedError(f"{w_path}: non-finite weights (NaN/Inf) in {', '.join(bad[:3])}")
    model = _build(cfg, shape, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:2])[:200]
        raise PretrainedError(
            f"{w_path}: tensors do not match the architecture of {CONFIG_FILE} ({detail})"
        ) from None
    return Pretrained(model.to(device).eval(), cfg, shape, num_classes, temps, source)
