"""Running an exported sub-network fast: micro-batching, channels-last and ``torch.compile``.

An exported width (:func:`~bnn_nested.deploy.export.export_width`) does a fraction of the full
network's FLOPs, but on a CPU its latency falls less than its FLOPs: the elementwise work (ReLU,
pooling) and the layers that are not truncated (the first convolution of a VGG) move whole
activation tensors through memory, and that traffic does not shrink with the width of the later
layers. Two levers here attack that cost without changing the function computed:

- :class:`MicroBatched` runs the module on consecutive slices of the batch, so every activation
  tensor is a slice of the batch's and stays in the CPU's caches between layers;
- :func:`compile_for_inference` is ``torch.compile`` with Inductor's *freezing* (weights become
  constants: BN folding, weight pre-packing and conv + activation fusion for oneDNN).

:func:`inference_module` combines them with BN folding and channels-last. Measured effect on
the zoo's VGG "11" at 32x32, batch 256, 2 CPU threads: ``benchmarks/width_latency.py`` and
``docs/RESULTS.md``. The wrappers are for running in-process; :func:`~bnn_nested.deploy.export.
save_exported` saves the plain module inside (``MicroBatched(load_exported(path), 64)`` restores
the wrapper after loading).

Example::

    fast = inference_module(model, 0.25, x[:2], micro_batch=64)
    torch.testing.assert_close(fast(x), model.eval()(x, width=0.25), atol=1e-5, rtol=1e-5)
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.timing import measure_latency
from bnn_nested.nest import NestifiedModel
from bnn_nested.nn.model import Width

#: Dynamo's per-code-object recompile limit that :func:`compile_for_inference` ensures.
RECOMPILE_LIMIT = 64


#: Micro-batch sizes :func:`tune_micro_batch` tries (``None``: the whole batch).
MICRO_BATCH_CANDIDATES: tuple[int | None, ...] = (None, 16, 32, 64, 128)


def check_micro_batch(micro_batch: int | str | None, allow_auto: bool = False) -> Any:
    """``micro_batch`` as an ``int`` (any integer type), or ``None`` (or ``"auto"`` when allowed);
    one-line error otherwise."""
    if micro_batch is None or (allow_auto and micro_batch == "auto"):
        return micro_batch
    try:
        if isinstance(micro_batch, bool):
            raise TypeError
        value = operator.index(micro_batch)
    except TypeError:
        value = 0
    if value < 1:
        accepted = "an integer >= 1, None or 'auto'" if allow_auto else "an integer >= 1 or None"
        raise ValueError(f"micro_batch must be {accepted}, got {micro_batch!r}")
    return value


@torch.no_grad()
def tune_micro_batch(
    module: nn.Module,
    batch: torch.Tensor,
    candidates: Sequence[int | None] = MICRO_BATCH_CANDIDATES,
    repeats: int = 3,
    channels_last: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> int | None:
    """The fastest micro-batch size for running ``module`` on ``batch`` (like cuDNN's benchmark
    mode: measured, not guessed). Sizes ``>= len(batch)`` are the whole batch (``None``).

    Every round times each candidate once (interleaved, after one warm-up call each); the
    candidate with the lowest median wins, ties going to the larger slice. ``clock`` (seconds) is
    :func:`~bnn_nested.deploy.timing.measure_latency`'s.

    Example::

        mb = tune_micro_batch(export_width(model, 0.25, x[:2]), x)   # x: a served batch
        fast = MicroBatched(export_width(model, 0.25, x[:2]), mb)
    """

    if not candidates:
        raise ValueError("candidates must name at least one micro-batch size (or None)")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    n = batch.shape[0]
    valid = [check_micro_batch(c) for c in candidates]
    sizes = sorted({None if c is None or c >= n else c for c in valid}, key=lambda c: -(c or n + 1))
    runners = {c: MicroBatched(module, c, channels_last) for c in sizes}
    for run in runners.values():
        run(batch)
    times: dict[int | None, list[float]] = {c: [] for c in sizes}
    for _ in range(repeats):
        for c, run in runners.items():
            times[c].append(measure_latency(run, batch, warmup=0, repeats=1, clock=clock).median_ms)
    return min(sizes, key=lambda c: statistics.median(times[c]))


class MicroBatched(nn.Module):
    """Apply ``module`` to slices of at most ``micro_batch`` examples and concatenate the outputs.

    Exact for any module whose output row ``i`` depends only on input row ``i`` (every exported
    sub-network in ``eval()``); a module that returns anything but one ``(B, ...)`` tensor for a
    ``(B, ...)`` input is rejected with a ``ValueError`` rather than concatenated wrongly.
    ``micro_batch=None`` runs the whole batch at once. With ``channels_last`` a 4-D input is
    converted to that memory format first (the layout of ``export_width(..., channels_last=True)``).

    Example::

        fast = MicroBatched(export_width(model, 0.25, x[:2], channels_last=True), 64, True)
        y = fast(x)                                  # same as model(x, width=0.25) in eval
    """

    def __init__(
        self, module: nn.Module, micro_batch: int | None, channels_last: bool = False
    ) -> None:
        super().__init__()
        self.module = module
        self.micro_batch = check_micro_batch(micro_batch)
        self.channels_last = channels_last

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.module(x)
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"MicroBatched: the module must map a ({x.shape[0]}, ...) batch to one "
                f"({x.shape[0]}, ...) tensor, got {got}"
            )
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ValueError("MicroBatched: input must have a batch dimension, got a 0-d tensor")
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.micro_batch is None or x.shape[0] <= self.micro_batch:
            return self._run(x)
        return torch.cat([self._run(part) for part in x.split(self.micro_batch)])

    def extra_repr(self) -> str:
        return f"micro_batch={self.micro_batch}, channels_last={self.channels_last}"


def compile_for_inference(module: nn.Module, freezing: bool = True, **kwargs) -> nn.Module:
    """``torch.compile(module, options={"freezing": freezing}, dynamic=False, **kwargs)``.

    Freezing treats parameters as constants, which lets Inductor fold BN, pre-pack convolution
    weights and fuse activations into oneDNN convolutions on CPU. The result must only be called
    under ``torch.no_grad()`` / ``torch.inference_mode()`` with unchanged weights. The first call
    compiles (seconds to minutes on a small CPU; cached by Inductor afterwards). Shapes are static
    by default: each batch size gets its own graph (micro-batching gives at most two).

    Dynamo keeps at most ``torch._dynamo.config.recompile_limit`` (default 8) compiled graphs per
    code object and silently runs further calls eagerly. Exports of one model at several widths
    (and batch sizes) share one ``forward``, and each call here brings a new Inductor backend, so
    the 9th compiled width would run eagerly: this raises that process-wide limit to at least
    :data:`RECOMPILE_LIMIT` (measured: 10 widths of the zoo's LeNet gave 8 graphs at the default, 10
    after raising it).

    Example::

        fast = compile_for_inference(export_width(model, 0.5, x[:2]))
        with torch.no_grad(): y = fast(x)
    """
    import torch._dynamo.config as dynamo_config  # deferred: slow to import, only compile needs it

    if "mode" in kwargs:
        raise ValueError(
            "compile_for_inference: pass Inductor settings as options={...}, not mode= "
            "(torch.compile accepts only one of them)"
        )
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), RECOMPILE_LIMIT))
    options = dict(kwargs.pop("options", None) or {})
    options["freezing"] = freezing
    kwargs.setdefault("dynamic", False)
    return torch.compile(module, options=options, **kwargs)  # type: ignore[return-value]


def inference_module(
    model: NestifiedModel,
    width: Width,
    example: torch.Tensor,
    micro_batch: int | None | Literal["auto"] = 64,
    channels_last: bool = True,
    compile: bool = False,
    temperature: float | None = None,
) -> nn.Module:
    """The sub-network at ``width`` prepared for fast inference.

    Exported with BN folded (:func:`~bnn_nested.deploy.export.export_width`); channels-last
    weights and inputs when ``channels_last`` (4-D inputs only); optionally compiled with freezing
    (then kept channels-first: Inductor picks its own layout); run in micro-batches of
    ``micro_batch`` examples (``None``: the whole batch at once; ``"auto"``: the fastest of
    :data:`MICRO_BATCH_CANDIDATES` on ``example``, see :func:`tune_micro_batch`; timed on the eager
    export even when ``compile``, so every candidate is not compiled).

    Args:
        model: a nested model.
        width: global width or per-layer groups, as for ``export_width``.
        example: an input batch ``(B, ...)`` for the export's forward pass; with
            ``micro_batch="auto"`` also the batch the sizes are timed on (pass one of the size
            you will serve).
        micro_batch: examples per slice (``None``: whole batch). Helps when activations overflow
            the CPU caches (VGG-11 at 32x32, batch 256: 56 vs 83 ms at width 0.25, see
            docs/RESULTS.md); costs a little on small models (LeNet) and is pointless on GPU.
            The default 64 was the fastest for VGG-11 in that sweep; ``"auto"`` measures.
        channels_last: channels-last layout for 4-D inputs (eager only).
        compile: apply :func:`compile_for_inference` to the exported module.
        temperature: a fitted temperature of ``width``, divided into the logits (see
            :func:`~bnn_nested.deploy.export.export_width`).

    Example::

        fast = inference_module(model, 0.25, x[:2])
        with torch.no_grad(): probs = fast(x).softmax(-1)
    """
    micro_batch = check_micro_batch(micro_batch, allow_auto=True)
    cl = channels_last and not compile and example.dim() == 4
    module: nn.Module = export_width(
        model, width, example, channels_last=cl, temperature=temperature
    )
    if micro_batch == "auto":  # tuned eagerly: compiling every candidate size would take minutes
        micro_batch = tune_micro_batch(module, example, channels_last=cl)
    if compile:
        module = compile_for_inference(module)
    if micro_batch is None and not cl:
        return module
    return MicroBatched(module, micro_batch, channels_last=cl)
