"""Wall-clock timing of a callable: warm-up, repeats, median and inter-quartile range.

A leaf module (torch only): :mod:`bnn_nested.deploy.runtime` tunes micro-batches with it and
:mod:`bnn_nested.deploy.profile` times widths with it. Latency is the wall-clock time of one call
(``torch.no_grad``), measured after ``warmup`` untimed calls over ``repeats`` timed calls; we report
the median and the IQR (q75 - q25). On CUDA every call is bracketed by ``torch.cuda.synchronize()``.
The clock is a parameter so that tests can drive it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Timing", "measure_latency", "num_threads"]


@dataclass(frozen=True)
class Timing:
    """Latency statistics of one forward pass of a batch, in milliseconds."""

    median_ms: float
    iqr_ms: float
    q25_ms: float
    q75_ms: float
    repeats: int


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of an already sorted list."""
    pos = q * (len(sorted_xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


@contextmanager
def num_threads(threads: int | None):
    """Temporarily set ``torch.set_num_threads`` (``None`` leaves it alone)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def measure_latency(
    fn: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    warmup: int = 3,
    repeats: int = 10,
    threads: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn(x)``: ``warmup`` untimed calls, then ``repeats`` timed calls (CUDA synchronised).

    ``clock`` returns seconds (default :func:`time.perf_counter`).

    Example::

        t = measure_latency(lambda x: model(x, width=0.5), torch.zeros(256, 64))
        t.median_ms, t.iqr_ms
    """
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be >= 0 and repeats >= 1, got {warmup}, {repeats}")
    cuda = x.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times: list[float] = []
    with num_threads(threads):
        for _ in range(warmup):
            fn(x)
        sync()
        for _ in range(repeats):
            t0 = clock()
            fn(x)
            sync()
            times.append((clock() - t0) * 1e3)
    times.sort()
    q25, q75 = _quantile(times, 0.25), _quantile(times, 0.75)
    return Timing(statistics.median(times), q75 - q25, q25, q75, repeats)
