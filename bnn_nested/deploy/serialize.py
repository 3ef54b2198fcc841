"""Saving an exported width, and the safe weights-only format for sharing.

Saving uses **``torch.export``** (``.pt2``, batch dimension dynamic); ``torch.export.load(path)
.module()`` runs it with nothing but torch installed. ``format="onnx"`` writes an ONNX model
(``torch.onnx.export(..., dynamo=True)``, batch dimension dynamic), checked under ONNX Runtime before
it is written (:mod:`bnn_nested.deploy.onnx`; optional extra ``[onnx]``); it runs in any ONNX
runtime and loading it runs no Python code. ``format="torchscript"`` (``torch.jit.trace``) is
**deprecated upstream** and kept only for existing users (a ``DeprecationWarning`` says so).

**Loading a ``.pt2`` (or TorchScript) file runs code from it**: ``torch.export.load`` unpickles
with ``weights_only=False`` inside, so a crafted file executes whatever it likes. Load those only
from yourself or people you trust. For files from anyone else use the safe pair
:func:`save_width_weights` / :func:`load_width_weights`: the file holds tensors and a plain-data
spec (the run's config and the width), is read with ``torch.load(weights_only=True)`` (no code),
and the architecture is rebuilt by bnn-nested from the spec (configs naming ``model.name:
import``, which would import a module, are refused unless ``allow_import=True``).

Example::

    save_exported(plain, x[:1], "w050.pt2"); m = load_exported("w050.pt2")   # trusted files
    save_exported(plain, x[:2], "w050.onnx", format="onnx")                 # ONNX Runtime
    save_width_weights(model, cfg, 0.5, x[:2], "w050.pt")                   # to share
    m = load_width_weights("w050.pt")                                        # from anyone
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bnn_nested.config import ConfigError, build_config, import_trusted
from bnn_nested.deploy.export import EXPORT_FORMATS, ExportFormat, export_width
from bnn_nested.deploy.onnx import ONNX_ATOL, OrtModule, check_inputs, onnx_bytes, verify_onnx
from bnn_nested.deploy.runtime import MicroBatched
from bnn_nested.io import atomic_write, first_line, refused_code
from bnn_nested.models import build_model
from bnn_nested.nest import NestifiedModel
from bnn_nested.training.samplers import build_sampler

__all__ = [
    "UnsafeOrInvalidWeights",
    "load_exported",
    "load_width_weights",
    "save_exported",
    "save_width_weights",
]


def save_exported(
    module: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    format: ExportFormat = "export",
    dynamic_batch: bool = True,
) -> Path:
    """Save ``module`` so that :func:`load_exported` (torch only) can run it; written atomically.

    ``format="export"``: ``torch.export.export`` + ``torch.export.save`` (``.pt2``), batch dimension
    dynamic when ``dynamic_batch`` (``example`` needs batch >= 2 then). ``"onnx"``:
    ``torch.onnx.export(..., dynamo=True)`` (:func:`~bnn_nested.deploy.onnx.onnx_bytes`), run under
    ONNX Runtime on ``example`` (and on a batch one row longer when ``dynamic_batch``) and written
    only if its outputs equal ``module``'s within ``ONNX_ATOL`` (else
    :class:`~bnn_nested.deploy.onnx.OnnxMismatch`, nothing written). ``"torchscript"``:
    ``torch.jit.trace`` + ``torch.jit.save``, deprecated (``DeprecationWarning``). A
    :class:`~bnn_nested.deploy.runtime.MicroBatched` wrapper is not saved, only the module inside it
    (wrap the loaded module again).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if format == "torchscript":
        _warn_torchscript()
    while isinstance(module, MicroBatched):
        module = module.module
    module = module.eval()
    buf = io.BytesIO()
    with torch.no_grad():
        if format == "onnx":
            data = onnx_bytes(module, example, dynamic_batch=dynamic_batch)
            runtime = OrtModule(data)
            verify_onnx(module, runtime, check_inputs(example, dynamic_batch), ONNX_ATOL)
            buf.write(data)
        elif format == "export":
            if dynamic_batch and example.shape[0] < 2:
                example = example.expand((2,) + tuple(example.shape[1:])).contiguous()
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            torch.export.save(program, buf)
        else:
            torch.jit.save(torch.jit.trace(module, example), buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_exported(path: str | Path, format: ExportFormat = "export") -> nn.Module:
    """Load a module written by :func:`save_exported` (needs only torch).

    Equivalent torch-only code: ``torch.export.load(path).module()`` or ``torch.jit.load(path)``.
    ``format="onnx"`` returns an :class:`~bnn_nested.deploy.onnx.OrtModule` (ONNX Runtime, CPU;
    tensors in, tensors out); elsewhere ``onnxruntime.InferenceSession(path)`` runs the file.

    Warning:
        For ``"export"`` and ``"torchscript"`` this **runs code stored in the file**:
        ``torch.export.load`` unpickles with ``weights_only=False`` (and TorchScript files hold code
        by design). Load only files you made or trust; for files from others use
        :func:`load_width_weights` (tensors only) or ONNX (a graph of standard operators).
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    if format == "onnx":
        return OrtModule(Path(path))  # type: ignore[return-value]
    if format == "torchscript":
        _warn_torchscript()
    if format == "export":
        return torch.export.load(str(path)).module()
    return torch.jit.load(str(path))


def _warn_torchscript() -> None:
    warnings.warn(
        'format="torchscript" is deprecated (TorchScript is deprecated upstream); use "export" '
        '(torch.export, .pt2) or "onnx"',
        DeprecationWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- safe weights

#: ``format`` field of a file written by :func:`save_width_weights`.
WIDTH_WEIGHTS_FORMAT = "bnn-nested-width-weights/1"


class UnsafeOrInvalidWeights(ValueError):
    """A width-weights file that is refused: holds code, is malformed or does not match its spec."""


def save_width_weights(
    model: NestifiedModel,
    config: Any,
    width: float,
    example: torch.Tensor,
    path: str | Path,
    fold_batchnorm: bool = True,
) -> Path:
    """Save the sub-network at ``width`` as tensors plus a plain-data spec (safe to share).

    Args:
        model: the trained model of a run (``load_run(...).model``).
        config: its :class:`~bnn_nested.config.Config` (the architecture is rebuilt from it).
        width: a global width in (0, 1].
        example: an input batch ``(B, ...)`` (shape and one forward pass for the export).

    Returns:
        ``path``, written atomically; read it back with :func:`load_width_weights`.
    """
    plain = export_width(model, float(width), example, fold_batchnorm=fold_batchnorm)
    with torch.no_grad():
        num_classes = int(plain(example[:2]).shape[-1])
    spec = {
        "config": config.to_dict(),
        "width": float(width),
        "input_shape": [int(d) for d in example.shape[1:]],
        "num_classes": num_classes,
        "fold_batchnorm": bool(fold_batchnorm),
    }
    state = {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": WIDTH_WEIGHTS_FORMAT, "spec": spec, "state": state}, buf)
    return atomic_write(path, lambda f: f.write(buf.getvalue()))


def load_width_weights(path: str | Path, allow_import: bool = False) -> nn.Module:
    """Rebuild the sub-network saved by :func:`save_width_weights`; runs no code from the file.

    The file is read with ``torch.load(weights_only=True)`` (tensors and plain values only), the
    architecture is built by bnn-nested from the stored config and width, and the tensors must
    match it exactly (names and shapes).

    Raises:
        UnsafeOrInvalidWeights: the file holds pickled code (refused, never run), is not such a
            file, names ``model.name: import`` without ``allow_import``, or does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        refused = refused_code(err)  # weights_only refused a callable: the file carries code
        if refused is not None:
            raise UnsafeOrInvalidWeights(
                f"{path}: holds code ({refused}) that was refused, never run; not a "
                "width-weights file"
            ) from None
        first = first_line(err, 150)
        raise UnsafeOrInvalidWeights(
            f"{path}: corrupt or truncated weights file ({first})"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != WIDTH_WEIGHTS_FORMAT:
        raise UnsafeOrInvalidWeights(
            f"{path}: not a width-weights file (format {WIDTH_WEIGHTS_FORMAT!r} expected)"
        )
    spec, state = blob.get("spec"), blob.get("state")
    try:
        width = float(spec["width"])
        shape = tuple(int(d) for d in spec["input_shape"])
        num_classes = int(spec["num_classes"])
        fold = bool(spec["fold_batchnorm"])
        cfg = build_config(spec["config"])
        ok = (
            0.0 < width <= 1.0
            and 0 < len(shape) <= 4
            and all(0 < d <= 4096 for d in shape)
            and 0 < num_classes <= 100_000
            and isinstance(state, dict)
            and all(isinstance(v, torch.Tensor) for v in state.values())
        )
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise UnsafeOrInvalidWeights(f"{path}: malformed spec ({str(err)[:150]})") from None
    if not ok:
        raise UnsafeOrInvalidWeights(f"{path}: malformed spec (width, input_shape or tensors)")
    import_trusted(cfg, allow_import, str(path), UnsafeOrInvalidWeights)
    with torch.random.fork_rng():  # building a model draws random initial weights
        model = build_model(
            cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, num_classes
        )
        plain = export_width(model, width, torch.zeros((2, *shape)), fold_batchnorm=fold)
    try:
        plain.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise UnsafeOrInvalidWeights(
            f"{path}: tensors do not match the architecture of its spec ({detail})"
        ) from None
    return plain.eval()
