"""Cost profile of a nested model per width: parameters and FLOPs (:mod:`bnn_nested.cost`) and the
measured latency (:mod:`bnn_nested.deploy.timing`) of the sliced, masked or exported network, cached
in the run directory.

Example::

    costs = profile_widths(model, torch.zeros(1, 64), [0.25, 0.5, 1.0], batch_size=256)
    [(c.width, c.flops, c.latency_ms) for c in costs]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from bnn_nested.config import LATENCY_MODES, check_choice
from bnn_nested.deploy.cache import read_cache, write_cache
from bnn_nested.deploy.onnx import onnx_width, require_onnx
from bnn_nested.deploy.runtime import inference_module
from bnn_nested.deploy.timing import measure_latency, num_threads
from bnn_nested.io import is_number
from bnn_nested.nest import NestifiedModel, sliced_network
from bnn_nested.nest.slicing import sliced_cost
from bnn_nested.nn.ordering_unit import active_groups

#: How the width is realised when measuring latency.
LatencyMode = Literal["sliced", "masked", "exported", "onnxruntime"]
#: Micro-batch of the ``"exported"`` latency mode on CPU (none on CUDA): tuned per width.
EXPORTED_MICRO_BATCH = "auto"
#: File name of the cost cache inside a run directory.
PROFILE_FILE = "deploy/profile.json"


# --------------------------------------------------------------------------- profiles


@dataclass
class WidthCost:
    """Cost of one width. ``flops``/``params`` are per example (batch 1); latency is per batch of
    ``batch_size`` (median and IQR over ``repeats`` passes, ms)."""

    width: float
    params: int
    flops: int
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None
    batch_size: int = 1
    threads: int | None = None
    device: str = "cpu"
    mode: str = "sliced"
    #: ``mode="exported"`` only: the micro-batch size that was timed (``None``: whole batch)
    micro_batch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _expand(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    x = example[:1]
    return x.expand((batch_size,) + tuple(x.shape[1:])).contiguous()


def profile_widths(
    model: NestifiedModel,
    example: torch.Tensor,
    widths: Sequence[float],
    batch_size: int = 1,
    threads: int | None = None,
    device: str | torch.device = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    latency: bool = True,
    mode: LatencyMode = "sliced",
    cache_dir: str | Path | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> list[WidthCost]:
    """Parameters, FLOPs (= 2 x MACs, per example) and latency (per batch) at each width.

    Args:
        model: nested model (put in ``eval()``; its device is left unchanged for counting).
        example: one input ``(1, ...)`` (extra rows are ignored); expanded to ``batch_size``.
        widths: global widths in ``(0, 1]``.
        threads: ``torch.set_num_threads`` during timing (``None``: current setting).
        device: where latency is measured (the model is moved there and back).
        latency: ``False`` skips timing (``latency_ms`` is ``None``).
        mode: ``"sliced"`` (the physically sliced plain network, eager, BN unfolded),
            ``"masked"`` (the nested model itself: the full network with the dropped channels
            masked at the inputs of their consumers) or ``"exported"`` (the module a deployment runs:
            :func:`~bnn_nested.deploy.runtime.inference_module`, i.e. exported with BN folded,
            channels-last, on CPU in micro-batches of the size that was fastest for this batch
            (:func:`~bnn_nested.deploy.runtime.tune_micro_batch`), on CUDA whole; not compiled)
            or ``"onnxruntime"`` (the exported module with BN folded, as ONNX under ONNX Runtime's
            CPU execution provider with ``threads`` intra-op threads, checked against the nested
            model within 1e-4 first: :func:`~bnn_nested.deploy.onnx.onnx_width`; CPU only, needs
            the optional extra ``[onnx]``).
        cache_dir: if given, results are cached in ``cache_dir/deploy/profile.json`` keyed by all
            settings; a later call with the same settings reads them instead of measuring.
        checkpoint: identity of the weights profiled (``LoadedRun.checkpoint_id``); cached
            entries of another checkpoint are recomputed (:mod:`bnn_nested.deploy.cache`).

    Example::

        costs = profile_widths(model, x[:1], [0.25, 1.0], batch_size=256, cache_dir="runs/demo")
    """
    check_choice("mode", mode, LATENCY_MODES)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for w in widths:
        active_groups(float(w), 2, 0)  # validates (0, 1]
    if mode == "onnxruntime" and latency:
        require_onnx()
        if torch.device(device).type != "cpu":
            raise ValueError(
                f"device: the 'onnxruntime' latency mode runs on the CPU, got {str(device)!r}"
            )
    settings = {
        "widths": [float(w) for w in widths],
        "batch_size": batch_size,
        "threads": threads,
        "device": str(device),
        "warmup": warmup,
        "repeats": repeats,
        "latency": latency,
        "mode": mode,
        "input_shape": list(example.shape[1:]),
    }
    # what "exported" runs: micro-batch size tuned on the batch on CPU (only caches gain from it)
    micro_batch = None if torch.device(device).type == "cuda" else EXPORTED_MICRO_BATCH
    if mode == "exported":
        settings["exported"] = {"micro_batch": micro_batch, "channels_last": True}
    if mode == "onnxruntime" and latency:
        settings["onnxruntime"] = {"version": _version("onnxruntime"), "provider": "CPU"}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache_path = Path(cache_dir) / PROFILE_FILE if cache_dir is not None else None
    cache: dict[str, Any] = {}
    if cache_path is not None:
        cache = read_cache(cache_path, checkpoint, _costs_valid)
        if key in cache:
            return [WidthCost(**d) for d in cache[key]["costs"]]

    model.eval()
    costs = []
    x1 = example[:1]
    for w in widths:
        flops, params = sliced_cost(model, float(w), x1)  # one sliced network for both counts
        costs.append(
            WidthCost(
                float(w),
                params,
                flops,
                batch_size=batch_size,
                threads=threads,
                device=str(device),
                mode=mode,
            )
        )
    if latency:
        first = next(model.parameters())
        home = first.device
        model.to(device)
        try:
            xb = _expand(example, batch_size).to(device)
            for c in costs:
                if mode == "sliced":  # the physically smaller network (export's slice)
                    fn = sliced_network(model, c.width, xb[:2])
                elif mode == "masked":  # the full network, consumers' inputs masked

                    def fn(x, w=c.width):
                        return model(x, width=w)
                elif mode == "exported":
                    with num_threads(threads):  # tune under the thread count that is timed
                        fn = inference_module(model, c.width, xb, micro_batch=micro_batch)
                    c.micro_batch = getattr(fn, "micro_batch", None)
                else:
                    fn = onnx_width(model, c.width, xb[:2], threads=threads)
                t = measure_latency(fn, xb, warmup, repeats, threads)
                c.latency_ms, c.latency_iqr_ms = t.median_ms, t.iqr_ms
        finally:
            model.to(home)
    if cache_path is not None:
        cache[key] = {"settings": settings, "costs": [c.to_dict() for c in costs]}
        write_cache(cache_path, checkpoint, cache)
    return costs


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _costs_valid(entry: dict[str, Any]) -> bool:
    """A cached profile entry has the shape :func:`profile_widths` writes (else: recomputed)."""
    costs = entry["costs"]
    if not isinstance(costs, list) or not costs:
        return False
    for d in costs:
        c = WidthCost(**d)
        numbers = (c.width, c.params, c.flops)
        if not all(is_number(v, finite=True) and v >= 0 for v in numbers):
            return False
        if c.latency_ms is not None and not is_number(c.latency_ms, finite=True):
            return False
    return True
