"""Checkpoints: written atomically, loaded with ``weights_only=True``, errors in one line.

A checkpoint is a dict of tensors and plain Python values (no pickled objects), so it loads with
``torch.load(..., weights_only=True)``. Writes go to a temporary file beside the target, are
fsync'ed and renamed over it (:func:`bnn_nested.io.atomic_write`): a reader, or a resumed run after
SIGKILL, sees either the previous checkpoint or the new one, never half of one.

Example::

    save_checkpoint("runs/a/checkpoint.pt", {"model": model.state_dict(), "rng": capture_rng_state()})
    state = load_checkpoint("runs/a/checkpoint.pt")
"""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnn_nested.io import atomic_write, first_line, refused_code

#: 2: the zoo is built by ``nestify`` (model weights under ``net.``, one ordering unit per channel
#: dimension): every run trained from a config since then loads. Format 1 runs held hand-nested
#: models (classes that sliced their own weights), which the library no longer has: they cannot
#: be loaded (retrain them).
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or incompatible (one-line message)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain Python values only) atomically to ``path``."""
    state = {"format_version": FORMAT_VERSION, **state}
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never modifies the file.

    Raises:
        CheckpointError: missing, corrupt or truncated file, a file holding pickled code (refused,
            never run), or an unsupported format version.
    """
    return read_checkpoint(path, map_location)[0]


def read_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], str]:
    """:func:`load_checkpoint` plus the SHA-256 of the bytes that were loaded (the identity that
    caches computed from this checkpoint are keyed by)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    data = path.read_bytes()  # read once: the digest is of exactly what is loaded
    digest = hashlib.sha256(data).hexdigest()
    try:  # torch.save writes a zip archive with a CRC-32 per record: verify them all first
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except Exception as err:
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({first_line(err)})"
        ) from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint (CRC mismatch in record {bad})")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling, I/O and tensor errors alike: the file is bad
        refused = refused_code(err)  # weights_only refused a callable: the file carries code
        if refused is not None:
            raise CheckpointError(
                f"{path}: holds code ({refused}) that was refused, never run; a bnn-nested "
                "checkpoint holds only tensors and plain values"
            ) from None
        raise CheckpointError(
            f"{path}: corrupt or truncated checkpoint ({first_line(err)})"
        ) from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path}: not a bnn_nested checkpoint")
    if state["format_version"] == 1:
        raise CheckpointError(
            f"{path}: checkpoint format 1 holds a hand-nested model from before the zoo was built "
            f"by nestify (this version reads {FORMAT_VERSION}); retrain the run"
        )
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {str(state['format_version'])[:40]} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    return state, digest


def nonfinite_tensors(state: dict[str, Any], prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict holding NaN or Inf."""
    bad = []
    for k, v in state.items():
        name = f"{prefix}{k}"
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            if not bool(torch.isfinite(v).all()):
                bad.append(name)
        elif isinstance(v, dict):
            bad += nonfinite_tensors(v, name + ".")
    return bad


def require_finite(path: str | Path, model_state: dict[str, Any]) -> None:
    """Raise a one-line :class:`CheckpointError` naming the checkpoint and its non-finite tensors."""
    bad = nonfinite_tensors(model_state)
    if bad:
        shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise CheckpointError(
            f"{path}: non-finite weights (NaN/Inf) in {len(bad)} tensor(s): {shown[:240]}; the "
            "run diverged before this checkpoint; retrain it (e.g. lower train.lr, set "
            "train.grad_clip)"
        )


def require_keys(path: str | Path, state: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Raise a one-line :class:`CheckpointError` if ``state`` lacks any of ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: incompatible checkpoint (missing {', '.join(missing)})")


# -- random number generator states ------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """States of the torch CPU (and CUDA) RNGs, Python ``random`` and numpy's global RNG, as
    tensors and plain values (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        }
    except ImportError:  # pragma: no cover
        pass
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states restored only where CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda[: torch.cuda.device_count()]])
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
