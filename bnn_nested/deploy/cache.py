"""Caches inside a run directory (``deploy/val_metrics.json``, ``deploy/profile.json``).

Every entry records the checkpoint it was computed from (``{"step", "sha256"}`` of
``checkpoint.pt``, :attr:`~bnn_nested.runs.run.LoadedRun.checkpoint_id`); an entry from another
checkpoint is stale and is recomputed (and dropped on the next write), so ``select`` after a resumed
run uses the final checkpoint's numbers. A cache file that is corrupt, not JSON or of the wrong
shape is ignored with a one-line note naming it, and rewritten.

File layout: ``{key: {"checkpoint": {...} | null, ...entry}}``, one key per set of settings.

Example::

    entries = read_cache(run / VAL_METRICS_FILE, run.checkpoint_id, valid=rows_valid)
    write_cache(run / VAL_METRICS_FILE, run.checkpoint_id, {**entries, key: entry})
"""

from __future__ import annotations

import sys
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
    """Write ``entries`` (each tagged with ``checkpoint``) atomically; stale entries are gone."""
    return atomic_write_json(path, {k: {**e, "checkpoint": checkpoint} for k, e in entries.items()})
