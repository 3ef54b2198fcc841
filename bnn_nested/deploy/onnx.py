"""ONNX export of an exported width and inference under ONNX Runtime (optional extra ``[onnx]``).

The plain module of one width (:func:`~bnn_nested.deploy.export.export_width`, BN folded) is
exported with ``torch.onnx.export(..., dynamo=True)``: ``torch.export`` captures the graph and
onnxscript translates it to ONNX, with the batch dimension dynamic. The result is checked under
ONNX Runtime (CPU execution provider) against the module it came from: the largest absolute
difference of the outputs must be at most :data:`ONNX_ATOL` (float32 kernels differ in summation
order, nothing else).

An ONNX file is a protobuf graph of standard operators and tensors: loading it runs no Python code
(unlike a ``.pt2`` or TorchScript file, see :mod:`bnn_nested.deploy.serialize`).

Needs ``onnx``, ``onnxruntime`` and ``onnxscript``: ``pip install 'bnn-nested[onnx]'``. Without
them every function here raises :class:`OnnxUnavailable` (one line saying what to install).

Example::

    plain = export_width(model, 0.5, x[:2])
    save_exported(plain, x[:2], "w050.onnx", format="onnx")    # verified before it is written
    run = OrtModule("w050.onnx", threads=2); probs = run(x).softmax(-1)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from bnn_nested.deploy.export import export_width
from bnn_nested.nest import NestifiedModel
from bnn_nested.nn.model import Width

__all__ = [
    "ONNX_ATOL",
    "ONNX_EXTRA",
    "OnnxMismatch",
    "OnnxUnavailable",
    "OrtModule",
    "onnx_bytes",
    "onnx_width",
    "require_onnx",
    "verify_onnx",
]

#: Largest absolute difference accepted between ONNX Runtime's output and the PyTorch module's.
ONNX_ATOL = 1e-4
#: The packages of the optional extra, and how to install them.
ONNX_PACKAGES: tuple[str, ...] = ("onnx", "onnxruntime", "onnxscript")
ONNX_EXTRA = "pip install 'bnn-nested[onnx]'"
#: Names of the graph's input and output.
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class OnnxUnavailable(RuntimeError):
    """The optional extra ``[onnx]`` is not installed (one line naming the missing packages)."""


class OnnxMismatch(ValueError):
    """ONNX Runtime's output differs from the PyTorch module's by more than the tolerance."""


def require_onnx() -> None:
    """Raise :class:`OnnxUnavailable` unless onnx, onnxruntime and onnxscript are importable."""
    missing = [p for p in ONNX_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise OnnxUnavailable(
            f"ONNX export and the 'onnxruntime' latency mode need {', '.join(missing)}: "
            f"{ONNX_EXTRA}"
        )


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    """``torch.export`` specialises a batch dimension of size 1: trace with at least two rows."""
    if example.shape[0] >= 2:
        return example
    return example[:1].expand((2,) + tuple(example.shape[1:])).contiguous()


@torch.no_grad()
def onnx_bytes(
    module: nn.Module, example: torch.Tensor, dynamic_batch: bool = True, opset: int | None = None
) -> bytes:
    """``module`` (in ``eval()``) as a serialised ONNX model, exported with
    ``torch.onnx.export(..., dynamo=True)``; input ``"input"``, output ``"logits"``, the batch
    dimension dynamic when ``dynamic_batch``. ``opset``: ONNX opset (``None``: torch's default)."""
    require_onnx()
    module = module.eval()
    example = _batch_of_two(example) if dynamic_batch else example
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        dynamic_shapes=shapes,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        verbose=False,
    )
    return program.model_proto.SerializeToString()


class OrtModule:
    """An ONNX model run by ONNX Runtime on the CPU execution provider, called like a module:
    ``OrtModule(path_or_bytes, threads)(x)`` takes and returns ``torch.Tensor`` (float32, CPU).

    ``threads``: ``SessionOptions.intra_op_num_threads`` (``None``: ``torch.get_num_threads()``,
    so that it runs on as many threads as eager PyTorch would); inter-op parallelism is off
    (sequential execution, one thread).
    """

    def __init__(self, model: bytes | str | Path, threads: int | None = None) -> None:
        require_onnx()
        import onnxruntime as ort  # deferred: optional extra [onnx]

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        self.threads = int(threads) if threads is not None else torch.get_num_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3  # errors only
        if not isinstance(model, bytes) and not Path(model).is_file():
            raise FileNotFoundError(f"{model}: no such ONNX file")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # ONNX Runtime's own error types (InvalidProtobuf, Fail, ...)
            what = "ONNX model" if isinstance(model, bytes) else str(model)
            text = str(err).strip().splitlines()
            detail = text[0][:200] if text else type(err).__name__
            raise ValueError(f"{what}: not a model ONNX Runtime can load ({detail})") from None
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: x.detach().to("cpu", torch.float32).contiguous().numpy()}
        return torch.from_numpy(self.session.run(None, feed)[0])

    def eval(self) -> OrtModule:  # a module's interface, for code that calls ``.eval()``
        return self


def verify_onnx(
    reference: Callable[[torch.Tensor], torch.Tensor],
    runtime: Callable[[torch.Tensor], torch.Tensor],
    inputs: Sequence[torch.Tensor],
    atol: float = ONNX_ATOL,
) -> float:
    """Largest ``|runtime(x) - reference(x)|`` over ``inputs``; raises :class:`OnnxMismatch` when a
    shape differs or the difference exceeds ``atol``."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            want = reference(x).detach().float().cpu()
            got = runtime(x)
            if tuple(got.shape) != tuple(want.shape):
                raise OnnxMismatch(
                    f"ONNX output has shape {tuple(got.shape)}, PyTorch {tuple(want.shape)} "
                    f"(input {tuple(x.shape)})"
                )
            diff = float((got - want).abs().max()) if want.numel() else 0.0
            if not diff <= atol:  # also catches NaN
                raise OnnxMismatch(
                    f"ONNX Runtime's output differs from PyTorch's by {diff:.3g} > {atol:g} "
                    f"(input {tuple(x.shape)})"
                )
            worst = max(worst, diff)
    return worst


def check_inputs(example: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """The inputs an export is verified on: ``example``, and with a dynamic batch also a batch of
    another size (one more row), so a batch size baked into the graph is caught."""
    xs = [example]
    if dynamic_batch:
        extra = example[:1]
        xs.append(torch.cat([example, extra]) if example.shape[0] >= 1 else extra)
    return xs


def onnx_width(
    model: NestifiedModel,
    width: Width,
    example: torch.Tensor,
    threads: int | None = None,
    verify: bool = True,
    fold_batchnorm: bool = True,
) -> OrtModule:
    """The sub-network at ``width`` under ONNX Runtime: :func:`~bnn_nested.deploy.export.
    export_width` (BN folded), exported to ONNX with a dynamic batch, checked against the nested
    model on ``example`` and on a batch one row longer (within :data:`ONNX_ATOL`) when ``verify``.

    Example::

        run = onnx_width(model, 0.5, x[:2], threads=2)
        torch.testing.assert_close(run(x), model.eval()(x, width=0.5), atol=1e-4, rtol=0)
    """
    require_onnx()
    plain = export_width(model, width, example, fold_batchnorm=fold_batchnorm)
    runtime = OrtModule(onnx_bytes(plain, example), threads)
    if verify:
        model.eval()
        verify_onnx(lambda x: model(x, width=width), runtime, check_inputs(example, True))
    return runtime
