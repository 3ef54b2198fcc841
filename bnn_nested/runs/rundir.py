"""Run directories: what makes one recognisable, who may write it, and what is left after a kill.

* **Marker.** ``train`` writes :data:`MARKER` (a small JSON file) before anything else. A directory
  is a *run* when it holds the marker, or ``config.yaml`` and ``checkpoint.pt`` (runs written before
  the marker existed). ``--overwrite`` replaces only a run whose entries are all ones that
  bnn-nested writes (:data:`RUN_ENTRIES`); anything else is refused and left as it was
  (:func:`check_run_dir`; :func:`prepare_run_dir` marks and clears it under the lock).
* **Lock.** Training, resuming and overwriting hold an advisory lock (``fcntl.flock``) on
  :data:`LOCK` inside the run for as long as they write it; a second writer fails at once with one
  line naming the holder's process id. The lock file stays (removing it would race with a waiting
  writer); the kernel drops the lock when the holder exits, however it exits.
* **Orphans.** :func:`remove_orphans` deletes the temporary files of atomic writes
  (``.NAME.XXXX.tmp``) that a killed writer left; only called under the lock.

Example::

    with RunLock("runs/a"):
        remove_orphans("runs/a")
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from bnn_nested.io import atomic_write_json

try:  # POSIX; elsewhere the lock is a no-op
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Written first into every run directory (JSON: ``{"tool": "bnn-nested", ...}``).
MARKER = ".bnn-nested-run"
#: Advisory lock file held by the process that writes the run.
LOCK = ".bnn-nested.lock"
#: Top-level entries bnn-nested writes into a run directory (``--overwrite`` replaces only these).
RUN_ENTRIES = frozenset(
    {
        MARKER,
        LOCK,
        "config.yaml",
        "checkpoint.pt",
        "teacher.pt",
        "history.json",
        "keep_probs.json",
        "keep_probs.png",
        "ordering.md",
        "report.json",
        "report.md",
        "calibration",  # evaluate --calibrate temperature
        "cascade.json",  # cascade
        "plots",
        "deploy",
        "tensorboard",
    }
)
#: Names of the temporary files :func:`bnn_nested.io.atomic_write` creates (``mkstemp``).
_TMP = re.compile(r"^\.[^/]+\.[A-Za-z0-9_]{6,}\.tmp$")


class RunExistsError(FileExistsError):
    """The run directory exists and may not be replaced."""


class RunLockedError(RuntimeError):
    """Another process is writing the run directory."""


def write_marker(run_dir: str | Path) -> Path:
    """Mark ``run_dir`` as a bnn-nested run (atomically)."""

    return atomic_write_json(Path(run_dir) / MARKER, {"tool": "bnn-nested", "kind": "run"})


def has_marker(run_dir: str | Path) -> bool:
    """``run_dir`` holds a marker written by :func:`write_marker` (read at most 4 KiB)."""
    path = Path(run_dir) / MARKER
    try:
        if not path.is_file():
            return False
        with open(path, "rb") as f:
            data = json.loads(f.read(4096).decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("tool") == "bnn-nested"


def is_run_dir(run_dir: str | Path) -> bool:
    """``run_dir`` was written by bnn-nested: it holds the marker, or ``config.yaml`` and
    ``checkpoint.pt`` (runs from before the marker)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or run_dir.is_symlink():
        return False
    legacy = (run_dir / "config.yaml").is_file() and (run_dir / "checkpoint.pt").is_file()
    return has_marker(run_dir) or legacy


def _foreign_entries(run_dir: Path) -> list[str]:
    return sorted(
        p.name for p in run_dir.iterdir() if p.name not in RUN_ENTRIES and not _TMP.match(p.name)
    )


def is_empty(run_dir: str | Path) -> bool:
    """No entries other than the lock file (which a refused or failed writer may leave)."""
    return all(p.name == LOCK for p in Path(run_dir).iterdir())


def check_replaceable(run_dir: str | Path) -> None:
    """Raise :class:`RunExistsError` unless ``--overwrite`` may replace ``run_dir``: it is a run
    (:func:`is_run_dir`) and holds nothing bnn-nested did not write. Touches nothing."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise RunExistsError(
            f"{run_dir} is not a bnn-nested run (no {MARKER}, or config.yaml with "
            "checkpoint.pt); --overwrite only replaces runs; choose another --out"
        )
    foreign = _foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" (+{len(foreign) - 5} more)" if len(foreign) > 5 else ""
        )
        raise RunExistsError(
            f"{run_dir} holds files bnn-nested did not write ({shown[:200]}); "
            "--overwrite refuses to delete them"
        )


#: What a run is: removed last by :func:`clear_run` (the checkpoint, then the config).
_IDENTITY = ("checkpoint.pt", "config.yaml")


def clear_run(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` except the lock file and the marker (call under the lock,
    after :func:`check_replaceable`).

    The products of the old run (reports, history, plots, caches) go first, then its checkpoint,
    then its config: a kill at any point leaves either products beside the checkpoint and config
    they describe, or none; the marker stays, so the next ``--overwrite`` finishes the job."""
    entries = [p for p in Path(run_dir).iterdir() if p.name not in (LOCK, MARKER)]
    entries.sort(key=lambda p: (_IDENTITY.index(p.name) if p.name in _IDENTITY else -1, p.name))
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def remove_orphans(run_dir: str | Path) -> list[Path]:
    """Delete temporary files of interrupted atomic writes in ``run_dir`` and its ``deploy/`` and
    ``plots/`` folders; returns them. Call only while holding the run's lock."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "deploy", Path(run_dir) / "plots"):
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            if _TMP.match(p.name) and p.is_file() and not p.is_symlink():
                try:
                    p.unlink()
                    removed.append(p)
                except FileNotFoundError:  # pragma: no cover - raced with nobody (we hold the lock)
                    pass
    return removed


class RunLock:
    """Exclusive advisory lock on ``run_dir/.bnn-nested.lock`` (non-blocking).

    Raises:
        RunLockedError: another process holds it (one line naming the run and that process).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        path = self.run_dir / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (process {holder})" if holder.isdigit() else ""
                raise RunLockedError(
                    f"{self.run_dir} is being written by another bnn-nested process{who}; "
                    "wait for it to finish or stop it first"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_run_dir(out: str | Path, overwrite: bool = False) -> None:
    """Refuse an existing non-empty ``out`` unless ``overwrite`` and it is a bnn-nested run that
    holds only files bnn-nested writes (:func:`check_replaceable`).
    Nothing is touched."""
    if str(out).strip() == "":
        raise RunExistsError("--out: empty path; name the run directory to create")
    out = Path(out)
    if out.is_symlink():
        target = os.readlink(out)
        raise RunExistsError(
            f"--out: {out} is a symbolic link (to {target[:200]}); runs are not written through "
            "links: give the folder itself"
        )
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"--out: {out} exists and is not a directory")
    if out.exists() and not is_empty(out):
        if not overwrite:
            raise RunExistsError(f"{out} already exists; pass --overwrite to replace it")
        check_replaceable(out)


def prepare_run_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Create ``out`` and mark it as a run; with ``overwrite`` replace a run that was there. Call
    while holding the run's lock (:class:`RunLock`)."""
    out = Path(out)
    check_run_dir(out, overwrite)
    write_marker(out)  # first: a kill while clearing leaves a run the next --overwrite accepts
    clear_run(out)
    return out
