"""When the trainer saves a checkpoint, and how SIGINT stops it after a step.

* :class:`CheckpointPolicy`: every ``every_epochs`` epochs (not after the last one: the run writes
  its final checkpoint itself), every ``every_steps`` optimisation steps; ``0`` turns either off.
* :class:`SigintStop`: while active, the first SIGINT only sets :attr:`SigintStop.requested` (the
  trainer finishes the step, saves and raises); a second one raises ``KeyboardInterrupt`` at once.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass

__all__ = ["CheckpointPolicy", "SigintStop"]


@dataclass(frozen=True)
class CheckpointPolicy:
    """``every_epochs`` / ``every_steps``: the ``train.checkpoint_every(_steps)`` settings."""

    every_epochs: int = 0
    every_steps: int = 0

    def __post_init__(self) -> None:
        if self.every_epochs < 0 or self.every_steps < 0:
            raise ValueError(
                f"checkpoint intervals must be >= 0, got every_epochs={self.every_epochs}, "
                f"every_steps={self.every_steps}"
            )

    def after_step(self, step: int) -> bool:
        """Save after optimisation step ``step`` (counted from 1)?"""
        return bool(self.every_steps) and step % self.every_steps == 0

    def after_epoch(self, epoch: int, end: int) -> bool:
        """Save after epoch ``epoch`` (counted from 1) of ``end``?"""
        return bool(self.every_epochs) and epoch % self.every_epochs == 0 and epoch < end


class SigintStop:
    """Context manager turning the first SIGINT into a request to stop after the current step.

    Inactive (a no-op) when ``enabled`` is false or outside the main thread (Python delivers
    signals only there)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> SigintStop:
        if self.enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        self.requested = False
