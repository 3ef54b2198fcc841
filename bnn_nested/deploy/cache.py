"""Caches inside a run directory (``deploy/val_metrics.json``, ``deploy/profile.json``).

Every entry records the checkpoint it was computed from (``{"step", "sha256"}`` of
``checkpoint.pt``, :attr:`~bnn_nested.runs.loaded.LoadedRun.checkpoint_id`); an entry from another
checkpoint is stale and is recomputed (and dropped on the next write), so ``select`` after a resumed
run uses the final checkpoint's numbers. A cache file that is corrupt, not JSON or of the wrong
shape is ignored with a one-line note naming it, and rewritten.

File layout: ``{key: {"checkpoint": {...} | null, "written": "2026-12-07T14:03:00Z", ...entry}}``,
one key per set of settings; ``written`` is when the entry was computed (kept while the entry is
replayed, so a reader can say how old a cached latency is: :func:`written_at`).

Example::

    entries = read_cache(run / VAL_METRICS_FILE, run.checkpoint_id, valid=rows_valid)
    write_cache(run / VAL_METRICS_FILE, run.checkpoint_id, {**entries, key: entry})
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bnn_nested.io import JsonFileError, atomic_write_json, read_json


def note(text: str) -> None:
    """A one-line note on stderr (the command still succeeds)."""
    print(f"bnn-nested: note: {text[:400]}", file=sys.stderr)


def read_cache(
    path: str | Path,
    checkpoint: dict[str, Any] | None,
    valid: Callable[[dict[str, Any]], bool] = lambda e: True,
) -> dict[str, dict[str, Any]]:
    """The entries of the cache at ``path`` computed from ``checkpoint`` that pass ``valid``.

    A missing file is an empty cache; an unreadable or malformed one is noted on stderr and treated
    as empty (it is rewritten by the next :func:`write_cache`); entries of other checkpoints and
    invalid entries are left out.
    """
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = read_json(path, "cache")
    except (JsonFileError, OSError) as err:
        note(f"{str(err)[:300]}; ignoring it and recomputing")
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        note(f"cache {path} does not hold a mapping of entries; ignoring it and recomputing")
        return {}
    out: dict[str, dict[str, Any]] = {}
    bad = 0
    for key, entry in data.items():
        if entry.get("checkpoint") != checkpoint:
            continue  # stale: computed from another checkpoint
        try:
            ok = bool(valid(entry))
        except (TypeError, ValueError, KeyError, AttributeError):
            ok = False
        if ok:
            out[key] = entry
        else:
            bad += 1
    if bad:
        note(f"cache {path}: {bad} malformed entr{'y' if bad == 1 else 'ies'} ignored; recomputing")
    return out


def write_cache(
    path: str | Path, checkpoint: dict[str, Any] | None, entries: dict[str, dict[str, Any]]
) -> Path:
    """Write ``entries`` (each tagged with ``checkpoint``, and with ``written``: now, unless the
    entry was read from the cache and has it) atomically; stale entries are gone."""
    now = utc_now()
    return atomic_write_json(
        path, {k: {"written": now, **e, "checkpoint": checkpoint} for k, e in entries.items()}
    )


def drop_entries(
    path: str | Path,
    checkpoint: dict[str, Any] | None,
    drop: Callable[[dict[str, Any]], bool],
    valid: Callable[[dict[str, Any]], bool] = lambda e: True,
) -> int:
    """Remove the entries of the cache at ``path`` for which ``drop(entry)`` holds (e.g. timings to
    measure again); returns how many were removed (the file is rewritten only then)."""
    entries = read_cache(path, checkpoint, valid)
    keep = {}
    for k, e in entries.items():
        try:
            gone = bool(drop(e))
        except (TypeError, ValueError, KeyError, AttributeError):
            gone = True
        if not gone:
            keep[k] = e
    if len(keep) < len(entries):
        write_cache(path, checkpoint, keep)
    return len(entries) - len(keep)


def utc_now() -> str:
    """The current time, UTC, to the second (``2026-12-07T14:03:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def written_at(entry: dict[str, Any]) -> str:
    """When a cache entry was computed, for a message (``"at an unknown time"`` for entries
    written before the time was recorded, or a malformed one)."""
    w = entry.get("written")
    if isinstance(w, str) and len(w) == 20 and w[:4].isdigit() and w.endswith("Z"):
        return f"at {w[:10]} {w[11:19]} UTC"
    return "at an unknown time"
