"""A trained run read back: :func:`load_run` rebuilds the model, its config and its data splits
from a run directory as a :class:`LoadedRun`, which predicts with the run's stored temperatures
(:class:`~bnn_nested.runs.calibrated.CalibratedPredictor`) and says how the run's files differ
from its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnn_nested.config import Config
from bnn_nested.data import DataSplits, load_dataset
from bnn_nested.evaluation.calibration import (
    TEMPERATURE_FILE,
    load_temperatures,
    temperature_for,
)
from bnn_nested.evaluation.prediction import predict
from bnn_nested.io import first_line
from bnn_nested.nest import NestifiedModel
from bnn_nested.runs.batchnorm import recalibrate_bn_widths
from bnn_nested.runs.build import build_model_for
from bnn_nested.runs.calibrated import CalibratedPredictor
from bnn_nested.runs.runfiles import CHECKPOINT, CONFIG, check_temperature_file, read_run_checkpoint
from bnn_nested.safeyaml import read_text_file, safe_load
from bnn_nested.training.checkpoint import CheckpointError

#: :meth:`LoadedRun.config_edits` of a ``config.yaml`` that is not a YAML mapping.
UNREADABLE = "<unreadable>"


@dataclass
class LoadedRun(CalibratedPredictor):
    """A run's trained model with its config, data splits and checkpoint (:func:`load_run`)."""

    model: NestifiedModel
    config: Config
    splits: DataSplits
    checkpoint: dict[str, Any]
    run_dir: Path | None = None
    #: ``{"step", "sha256"}`` of the checkpoint file: caches computed from the run are keyed by it
    checkpoint_id: dict[str, Any] | None = None

    def temperatures(self) -> dict[float, float]:
        """Temperature per width stored in the run (``calibration/temperature.json``, fitted on
        this checkpoint's step; ``{}`` if none); see :mod:`bnn_nested.evaluation.calibration`."""

        if self.run_dir is None:
            return {}
        check_temperature_file(self.run_dir / TEMPERATURE_FILE)
        step = self.checkpoint.get("step")
        if not isinstance(step, int) or isinstance(step, bool):  # a damaged checkpoint's step
            step = -1  # matches no fit: stored temperatures are ignored (with a warning)
        return load_temperatures(self.run_dir, step)

    def temperature(self, width: float) -> float:
        """``T`` of ``width`` stored in the run (1.0 when none was fitted for it); what
        :meth:`~bnn_nested.runs.calibrated.CalibratedPredictor.predict` applies."""
        return temperature_for(self.temperatures(), width)

    def samples_identical(self, width: float = 1.0, n: int = 16) -> bool:
        """Whether the model's Monte-Carlo samples are all the same network (point weights and no
        dropout or other noise): two samples of ``n`` examples agree to float rounding. Their
        mutual information is then rounding noise, not uncertainty."""
        data = self.splits.val if self.splits.has_val else self.splits.test
        x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
        x = x.to(next(self.model.parameters()).device)
        probs = predict(self.model, x, width, samples=2, chunk=None)
        return bool((probs[0] - probs[1]).abs().max() <= 1e-6)

    @property
    def complete(self) -> bool:
        """The checkpoint is the final one of a finished run."""
        return bool(self.checkpoint.get("complete", False))

    def unfinished_note(self, run_dir: str | Path) -> str | None:
        """One line saying the run is unfinished (``None`` for a finished run)."""
        if self.complete:
            return None
        epoch, step = self.checkpoint.get("epoch", "?"), self.checkpoint.get("step", "?")
        return (
            f"{run_dir} is unfinished (checkpoint at epoch {epoch}/{self.config.train.epochs}, "
            f"step {step}); these numbers are from that checkpoint; finish it with: "
            f"bnn-nested train --resume {run_dir}"
        )

    def config_edits(self) -> list[str]:
        """Dotted keys where the run's ``config.yaml`` differs from the config in its checkpoint
        (the one every command uses: the checkpoint's weights were trained under it), e.g.
        ``["eval.samples"]``; ``[UNREADABLE]`` for a file that is not a YAML mapping; ``[]`` when
        they agree or there is no ``config.yaml``."""
        if self.run_dir is None or not (self.run_dir / CONFIG).exists():
            return []
        try:
            saved = safe_load(read_text_file(self.run_dir / CONFIG, "config"))
        except (OSError, ValueError):
            saved = None
        if not isinstance(saved, dict):
            return [UNREADABLE]
        return _differing_keys(saved, self.checkpoint.get("config", {}))

    def recalibrate_bn(self, widths: list[float]) -> list[float]:
        """Calibrate batch norm for the ``widths`` that training did not (those outside
        ``eval.widths``); returns them."""
        new = [w for w in widths if w not in self.config.eval.widths]
        if new:
            recalibrate_bn_widths(self.model, self.splits, new, self.config.data.eval_batch_size)
        return new


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (sorted)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix[:-1] or "config"]


def load_run(
    run_dir: str | Path, device: str | torch.device = "cpu", allow_import: bool = False
) -> LoadedRun:
    """Rebuild the trained model, its config and its data splits from a run directory.

    ``allow_import``: trust the run's config to import modules (its ``imports``, ``model.name:
    import``); without it such a run is refused (:class:`RunImportRefused`), as
    :func:`~bnn_nested.runs.pretrained.from_pretrained` refuses such a directory."""
    run_dir = Path(run_dir)
    _, state, digest, cfg = read_run_checkpoint(
        run_dir, map_location=device, allow_import=allow_import
    )
    splits = load_dataset(cfg.data, seed=cfg.seed)
    model = build_model_for(cfg, splits)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        first = first_line(err)
        raise CheckpointError(
            f"{run_dir / CHECKPOINT}: incompatible checkpoint ({first})"
        ) from None
    model.to(device).eval()
    step = state.get("step")
    ident = {"step": step if isinstance(step, int) else -1, "sha256": digest}
    return LoadedRun(model, cfg, splits, state, run_dir, ident)
