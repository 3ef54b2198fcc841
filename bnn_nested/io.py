"""Atomic file writes (a reader never sees a half-written checkpoint, report or plot) and careful
JSON reads (a corrupt file is a one-line error naming it)."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

try:  # POSIX; elsewhere no lock is seen
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

#: Largest JSON file read (reports, caches, profiles); ours are a few KiB.
MAX_JSON_BYTES = 16 << 20


class FileWriteError(OSError):
    """A write failed (disk full, permissions); the message names the file and says what was kept."""


class JsonFileError(ValueError):
    """A JSON file that cannot be read or does not hold what it should (one line naming it)."""


def current_umask() -> int:
    """The process umask (read from ``/proc/self/status`` where possible, which changes nothing;
    else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Mode of a file written here: ``0o666`` less the umask, as ``open()`` would create it
    (``0o644`` under the usual umask ``022``, ``0o664`` under ``002``)."""
    return 0o666 & ~current_umask()


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    The file gets the mode ``open()`` would give it (``0o666`` less the umask, :func:`new_file_mode`),
    not ``mkstemp``'s private ``0o600``, so a shared run directory is readable as usual.

    Raises:
        FileWriteError: the write failed (e.g. no space left); ``path`` is left as it was and the
            temporary file is removed; the message names ``path`` and whether an older one is kept.
    """
    path = Path(path)
    try:  # a folder that cannot be created or written (read-only): named, as a failed write is
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        reason = err.strerror or os.strerror(err.errno or errno.EIO)
        raise FileWriteError(err.errno, f"could not write {path} ({reason}); {kept}") from None
    try:
        os.fchmod(fd, new_file_mode())  # mkstemp creates 0600; others may read a shared run
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, FileWriteError):
            kept = "the previous version is kept" if path.exists() else "nothing was written"
            reason = err.strerror or os.strerror(err.errno or errno.EIO)
            raise FileWriteError(err.errno, f"could not write {path} ({reason}); {kept}") from None
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` as UTF-8. A character UTF-8 cannot hold (a file name's undecodable byte, which
    Python carries as a lone surrogate such as ``\udcff``) is written as that escape, so a run in a
    folder whose name is not UTF-8 still gets its reports."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8", "backslashreplace")))


def atomic_write_json(path: str | Path, obj: Any, strict: bool = False) -> Path:
    """Write ``obj`` as indented JSON. With ``strict``, NaN and +-Inf are written as ``null``
    (valid JSON for every reader; Python's default writes bare ``NaN``)."""
    if strict:
        text = json.dumps(finite_or_none(obj), indent=2, allow_nan=False)
    else:
        text = json.dumps(obj, indent=2, sort_keys=False)
    return atomic_write_text(path, text + "\n")


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN / Inf float (in nested dicts, lists, tuples) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def read_regular_file(
    path: str | Path,
    what: str,
    limit: int,
    error: type[Exception],
    missing: str = "does not exist",
) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (never blocks on a FIFO or a device).

    Raises:
        FileNotFoundError: no such file (``"{what} {path} {missing}"``).
        error: not a regular file, or larger than ``limit`` (one line naming ``what`` and ``path``).
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} {missing}") from None
    except ValueError:  # os.stat refuses a name with a null byte: say which file, not just that
        raise error(f"{what} {str(path)!r} is not a valid file name") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} {path} is larger than {limit} bytes")
    return data


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON value in ``path`` (a regular file of at most :data:`MAX_JSON_BYTES`).

    ``NaN`` / ``Infinity`` are accepted (Python writes them for undefined metrics).

    Raises:
        FileNotFoundError: no such file.
        JsonFileError: not a regular file, too large, not UTF-8 or not valid JSON; the one-line
            message names ``what`` and ``path``.
    """
    path = Path(path)
    data = read_regular_file(path, what, MAX_JSON_BYTES, JsonFileError, missing="not found")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise JsonFileError(f"{what} {path} is not UTF-8 text (a binary file?)") from None
    except (json.JSONDecodeError, RecursionError) as err:
        detail = first_line(err, 120, "invalid")
        raise JsonFileError(f"{what} {path} is not valid JSON ({detail})") from None


def first_line(err: BaseException | str, limit: int = 200, default: str | None = None) -> str:
    """The first line of an error's message, at most ``limit`` characters (``...`` marks a cut);
    an empty message gives ``default`` (else the exception's type name). The one helper for the
    one-line errors the library and the command line print."""
    text = str(err).strip()
    if not text:
        return default if default is not None else type(err).__name__
    line = text.split("\n")[0]  # not splitlines(): a "\r" in a file name is part of the name
    return line if len(line) <= limit else line[: max(limit - 3, 0)] + "..."


def lock_holder(path: str | Path) -> str | None:
    """Whether another process holds the advisory lock (``fcntl.flock``) on the file ``path``:
    ``None`` when nobody does (or there is no such file, or no ``fcntl``), else what the holder
    wrote into it (its process id, ``""`` if unreadable). Takes and drops the lock at once; creates
    nothing. Lets a command refuse a locked run before loading anything."""
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except (OSError, ValueError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def visible(text: str) -> str:
    """``text`` with control and format characters (terminal escape sequences, bidi overrides) and
    undecodable file-name bytes (lone surrogates) written as escapes (``\\x1b``, ``\\udcff``):
    what the command line prints of a file's content never acts on the terminal."""
    return "".join(
        repr(c)[1:-1] if unicodedata.category(c) in ("Cc", "Cf", "Cs") else c for c in text
    )


def is_number(value: Any, finite: bool = False) -> bool:
    """``value`` is an int or float (not a bool); with ``finite``, also not NaN or Inf."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return not finite or math.isfinite(value)


def refused_code(err: BaseException) -> str | None:
    """What ``torch.load(weights_only=True)`` refused when a file carries pickled code, e.g.
    ``GLOBAL posix.system``; ``None`` when ``err`` is some other (corrupt-file) error."""
    m = re.search(r"GLOBAL ([\w.<>]+)", str(err), flags=re.IGNORECASE)
    return f"GLOBAL {m.group(1)[:100]}" if m else None
