"""One ``predict`` for the objects that hold a trained model with its config and the temperatures
fitted for it: :class:`~bnn_nested.runs.loaded.LoadedRun` (a run directory) and
:class:`~bnn_nested.runs.pretrained.Pretrained` (a shared safetensors directory)."""

from __future__ import annotations

import torch

from bnn_nested.config import Config
from bnn_nested.evaluation.calibration import calibrated_predict
from bnn_nested.nn.model import NestedModel


class CalibratedPredictor:
    """Mixin: :meth:`predict` at a width with that width's stored temperature. The class gives
    ``model``, ``config`` and :meth:`temperature`."""

    model: NestedModel
    config: Config

    def temperature(self, width: float) -> float:
        """``T`` of ``width`` (1.0 when none was fitted for it)."""
        raise NotImplementedError

    def predict(
        self,
        x: torch.Tensor,
        width: float,
        samples: int | None = None,
        calibrated: bool = True,
    ) -> torch.Tensor:
        """``(S, B, C)`` probabilities at ``width``; with ``calibrated`` the stored temperature of
        that width applied, in its mode (``(1, B, C)`` for a ``pooled`` one).

        ``samples`` defaults to the number of Monte-Carlo samples the applied temperature was
        fitted with (a temperature calibrates only that count, and applying it at another warns:
        docs/METHODS.md#temperature-scaling-per-width); without one (``calibrated=False``, no
        temperature for the width, or a fit whose count is unknown) to ``config.eval.samples``."""
        t = self.temperature(width) if calibrated else 1.0
        if samples is None:
            samples = getattr(t, "samples", None) or self.config.eval.samples
        return calibrated_predict(self.model, x, width, samples, t)
