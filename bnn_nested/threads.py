"""How many CPU threads torch uses (``--threads`` on every command, ``train.threads`` in configs).

Small models lose most to thread oversubscription: on a 2-core machine shared with other jobs the
demo trained 10x slower with torch's default (one thread per core) than with one thread, because
every operation of a small network is shorter than the cost of waking and synchronising the
OpenMP threads while other processes hold the cores. ``auto`` (the default) therefore uses
:data:`AUTO_THREADS` threads (capped by the cores this process may use); large convolutional
models on a machine of their own gain from more (``--threads N``): the measured table is in
docs/RESULTS.md, "Threads on a shared machine" (``benchmarks/threads.py``).

Results are bit-identical between runs only at the same thread count: a different number of
threads splits reductions differently, and the weights then differ in the last bits (3e-8 after
2 epochs of the demo: ``benchmarks/threads.py --determinism``).

Pure Python until :func:`apply_threads` is called (it imports torch), so the command line can
validate its arguments first.
"""

from __future__ import annotations

import argparse
import os

#: Threads used by ``auto``: measured fastest or within noise of fastest for the demo MLP and
#: LeNet at batch 64 and 256 (docs/RESULTS.md, "Threads on a shared machine").
AUTO_THREADS = 1
#: Largest thread count accepted (a typo such as 10000 is an error, not 10000 threads).
MAX_THREADS = 1024


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(value: int | str | None) -> int:
    """The thread count ``value`` stands for: ``None`` or ``"auto"`` -> ``min(AUTO_THREADS, cores)``;
    an integer in ``[1, MAX_THREADS]`` as given (also as a string, e.g. ``"4"``).

    Raises:
        ValueError: anything else, one line naming ``threads`` and the accepted values.
    """
    if value is None or value == "auto":
        return min(AUTO_THREADS, available_cores())
    try:
        n = int(value)
        ok = not isinstance(value, (bool, float)) and str(n) == str(value).strip()
    except (TypeError, ValueError):
        ok = False
    if not ok or not 1 <= n <= MAX_THREADS:
        raise ValueError(
            f"threads: expected 'auto' or an integer in [1, {MAX_THREADS}], got {str(value)[:40]!r}"
        )
    return n


def parse_threads(text: str) -> int | str:
    """``argparse`` type for ``--threads``: ``"auto"`` or an integer in ``[1, MAX_THREADS]``."""

    try:
        resolve_threads(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'auto' or an integer in [1, {MAX_THREADS}], got {text[:40]!r}"
        ) from None
    return "auto" if text == "auto" else int(text)


def add_threads_argument(parser) -> None:
    """Add ``--threads auto|N`` to a command's parser."""
    parser.add_argument(
        "--threads",
        type=parse_threads,
        default=None,
        metavar="N",
        help=f"CPU threads for torch (default auto = {AUTO_THREADS}; small models run fastest on "
        "one, large ones on a machine of their own gain from more; docs/RESULTS.md)",
    )


def apply_threads(value: int | str | None) -> int:
    """``torch.set_num_threads(resolve_threads(value))``; returns the count set.

    Example:
        >>> apply_threads("auto")   # 1 thread
        1
    """
    n = resolve_threads(value)
    import torch  # deferred: the command line validates its arguments before torch loads

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
