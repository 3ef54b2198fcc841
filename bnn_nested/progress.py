"""Progress output for training and evaluation that also reads well in a log file.

On a terminal, a ``tqdm`` bar (redrawn in place). When stderr is not a terminal (``nohup``, a batch
job, ``2> log``), a bar's carriage returns would fill the log with thousands of redraws, so a plain
line is printed instead at most every :data:`LOG_INTERVAL` seconds (and once at the end), e.g.::

    epoch 3: 120/183 (66%), 12.1 s, ~6.3 s left

Example::

    for x, y in progress(loader, total=len(loader), desc="epoch 1"):
        step(x, y)
    with Progress(total=12, desc="evaluate") as p:
        p.update(desc="width 0.5, ood patches")
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

#: Seconds between two progress lines when stderr is not a terminal (``BNN_NESTED_LOG_INTERVAL``
#: overrides it).
LOG_INTERVAL = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("BNN_NESTED_LOG_INTERVAL", LOG_INTERVAL)))
    except ValueError:
        return LOG_INTERVAL


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Count steps out of ``total``: a tqdm bar on a terminal, else a line every ``interval`` s.

    Args:
        total: number of steps (``None``: unknown, no percentage).
        desc: what is counted, printed first (``update(desc=...)`` changes it).
        enabled: ``False`` prints nothing at all.
        stream: where to write (default ``sys.stderr``).
        interval: seconds between log lines when ``stream`` is not a terminal.
        initial: steps already done (a resumed epoch).
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float | None = None,
        initial: int = 0,
    ) -> None:
        self.total, self.desc, self.n = total, desc, initial
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = _interval() if interval is None else interval
        self._bar = None
        self._start = self._last = time.monotonic()
        self._lines = 0
        if enabled and _is_terminal(self.stream):
            from tqdm.auto import tqdm  # deferred: only a terminal gets a bar

            self._bar = tqdm(total=total, desc=desc, leave=False, initial=initial, file=self.stream)

    def update(self, n: int = 1, desc: str | None = None) -> None:
        self.n += n
        if desc is not None:
            self.desc = desc
        if not self.enabled:
            return
        if self._bar is not None:
            if desc is not None:
                self._bar.set_description(desc, refresh=False)
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(now)

    def line(self, now: float | None = None) -> str:
        """The log line for the current state."""
        elapsed = (time.monotonic() if now is None else now) - self._start
        text = f"{self.desc}: {self.n}" if self.desc else f"{self.n}"
        if self.total:
            text += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        text += f", {elapsed:.1f} s"
        if self.total and 0 < self.n < self.total:
            text += f", ~{elapsed / self.n * (self.total - self.n):.1f} s left"
        return text

    def _write(self, now: float) -> None:
        print(self.line(now), file=self.stream, flush=True)
        self._lines += 1

    def close(self) -> None:
        """Remove the bar, or print the final line when lines were printed (or it took long)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and (self._lines or time.monotonic() - self._start >= self.interval):
            self._write(time.monotonic())
        self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress(
    it: Iterable,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    initial: int = 0,
    stream: IO[str] | None = None,
    interval: float | None = None,
) -> Iterator:
    """Iterate over ``it`` counting its items with a :class:`Progress` (closed at the end)."""
    if total is None and hasattr(it, "__len__"):
        total = len(it)  # type: ignore[arg-type]
    p = Progress(total, desc, enabled, stream=stream, interval=interval, initial=initial)
    try:
        for item in it:
            yield item
            p.update()
    finally:
        p.close()


def epoch_line(record: dict[str, float]) -> str:
    """The per-epoch summary: the loss and its parts, each named.

    ``nll`` is the data term (mean cross-entropy, summed over the sampler's passes), ``kl/N`` the
    (annealed) KL divided by the training-set size, as it enters the loss; ``penalty`` the norm
    regularizer and ``distill`` the distillation term when present. They add up to ``loss``.
    Small values are printed with 3 significant digits instead of rounding to 0.0000.
    """
    parts = [f"epoch {int(record['epoch']):3d}", f"loss {record['loss']:.4f}"]
    if "data" in record:
        parts.append(f"nll {record['data']:.4f}")
    if "kl" in record:
        parts.append(f"kl/N {_num(record['kl'])}")
    for key in ("penalty", "distill"):
        if record.get(key):
            parts.append(f"{key} {_num(record[key])}")
    if "val_acc" in record:
        parts.append(f"val_acc {record['val_acc']:.4f}")
    return " ".join(parts)


def _num(v: float) -> str:
    return f"{v:.4f}" if v == 0 or abs(v) >= 0.01 else f"{v:.3g}"
