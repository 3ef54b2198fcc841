"""The files of a run directory that bnn-nested writes and reads back: ``checkpoint.pt``
(:func:`save_run_checkpoint`, :func:`read_run_checkpoint`), ``config.yaml`` and the stored
temperatures (:func:`check_temperature_file`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnn_nested.config import Config, ConfigError, build_config
from bnn_nested.data import DataSplits
from bnn_nested.io import JsonFileError, is_number, read_json
from bnn_nested.runs.build import check_run_imports
from bnn_nested.runs.rundir import is_run_dir
from bnn_nested.training.checkpoint import (
    CheckpointError,
    read_checkpoint,
    require_finite,
    require_keys,
    save_checkpoint,
)
from bnn_nested.training.trainer import Trainer

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.yaml"


def save_run_checkpoint(
    out: Path, trainer: Trainer, cfg: Config, splits: DataSplits, complete: bool = True
) -> Path:
    """Write ``out/checkpoint.pt`` (trainer state + config + data meta); ``complete`` marks the
    final one (a complete run cannot be resumed)."""
    state = trainer.state_dict()
    state["config"] = cfg.to_dict()
    state["complete"] = complete
    state["world_size"] = trainer.dist.world_size
    state["meta"] = {
        "input_shape": list(splits.input_shape),
        "num_classes": splits.num_classes,
        "num_train": splits.num_train,
    }
    return save_checkpoint(out / CHECKPOINT, state)


def _json_kind(value: Any) -> str:
    """JSON's name for the type of a decoded value (``null``, ``an array``, ...)."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else "true/false"
    kinds = ((str, "a string"), ((int, float), "a number"), (list, "an array"))
    return next((name for t, name in kinds if isinstance(value, t)), "a value")


def check_temperature_file(path: Path) -> None:
    """A run's stored temperatures have the layout ``evaluate --calibrate temperature`` writes
    (``{"step": int, "widths": {width: {"temperature": number > 0}}}``); else a one-line
    ``ValueError`` naming the file and what is wrong (not Python's ``KeyError`` text). A missing
    file is fine (no temperatures)."""
    if not path.exists():
        return
    try:
        doc = read_json(path, "temperature file")
    except JsonFileError as err:
        raise ValueError(f"{err}; refit with evaluate --calibrate temperature") from None
    what = None
    if not isinstance(doc, dict):
        what = f"JSON {_json_kind(doc)}, not an object"
    elif not isinstance(doc.get("widths"), dict):
        what = "no 'widths' mapping"
    elif "step" in doc and (not isinstance(doc["step"], int) or isinstance(doc["step"], bool)):
        what = "'step' is not an integer"
    else:
        for w, entry in doc["widths"].items():
            try:
                ok_width = 0.0 < float(w) <= 1.0
            except ValueError:
                ok_width = False
            t = entry.get("temperature") if isinstance(entry, dict) else None
            if not ok_width:
                what = f"width {w[:40]!r} is not a number in (0, 1]"
            elif not (is_number(t, finite=True) and t > 0):
                what = f"width {w[:40]}: no 'temperature' number > 0"
            if what:
                break
    if what:
        raise ValueError(
            f"{path}: malformed temperature file ({what}); refit with evaluate --calibrate "
            "temperature, or delete it"
        )


def read_run_checkpoint(
    run_dir: str | Path,
    keys: tuple[str, ...] = ("config", "model"),
    map_location: Any = "cpu",
    allow_import: bool = False,
) -> tuple[Path, dict[str, Any], str, Config]:
    """Open a run directory's checkpoint: ``(path, state, sha256, config)``.

    The one reader :func:`load_run` and :func:`~bnn_nested.runs.pretrained.from_run` share: the
    directory and checkpoint must exist (a run stopped before its first checkpoint says how to
    finish it), the file is read ``weights_only``, ``keys`` must be present, a state-dict model
    must be finite, and the config must validate. A config that imports modules (``imports``,
    ``model.name: import``) is refused unless ``allow_import`` (:func:`check_run_imports`); with
    it the ``imports`` are imported (the registered models and data sets rebuild the run).

    Raises:
        FileNotFoundError: no such directory.
        CheckpointError: one line naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    path = run_dir / CHECKPOINT
    if not path.exists() and is_run_dir(run_dir):
        raise CheckpointError(
            f"{run_dir}: no checkpoint yet (the run stopped or is still before its first one); "
            f"finish it with: bnn-nested train --resume {run_dir}"
        )
    state, digest = read_checkpoint(path, map_location=map_location)
    require_keys(path, state, keys)
    if isinstance(state["model"], dict):
        require_finite(path, state["model"])
    try:
        cfg = build_config(state["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from None
    check_run_imports(cfg, allow_import, path)
    return path, state, digest, cfg
