"""Latency of exported widths under eager PyTorch and under ONNX Runtime, in one interleaved run.

For the configs' VGG "11" (3x32x32, groups 32, kept 2) and LeNet (1x28x28, batch norm), nestified, untrained
(latency does not depend on the weights), on CPU at batch 256 (``--batch``), with ``--threads``
threads in both engines, for widths 0.25 / 0.5 / 0.75 / 1.0:

- ``eager``: :func:`~bnn_nested.deploy.export.export_width` (BN folded, contiguous NCHW), run by
  PyTorch;
- ``onnxruntime``: the same module exported with ``torch.onnx.export(..., dynamo=True)`` and run by
  ONNX Runtime's CPU execution provider (``intra_op_num_threads = --threads``, sequential), checked
  against the nested model within 1e-4 first (:func:`~bnn_nested.deploy.onnx.onnx_width`).

Every round times each (engine, width) once, so load changes on a shared CPU hit all of them alike;
the table gives the median over rounds, the latency ratio of each width to width 1.0 of the *same*
engine, and ONNX Runtime's time over eager PyTorch's at the same width. FLOPs = 2 x MACs.

Usage: ``.venv/bin/python benchmarks/onnx_latency.py [--threads 2] [--rounds 10] [--batch 256]
[--models vgg,lenet]`` (needs the optional extra: ``pip install 'bnn-nested[onnx]'``)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import time
import warnings

import torch

from bnn_nested.config import ModelConfig
from bnn_nested.cost import count_flops
from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.onnx import onnx_width, require_onnx
from bnn_nested.deploy.timing import measure_latency
from bnn_nested.models import build_model
from bnn_nested.models.plain import LENET_DEFAULT
from bnn_nested.nn.batchnorm import UncalibratedWidthWarning

warnings.filterwarnings("ignore", category=UncalibratedWidthWarning)
WIDTHS = (0.25, 0.5, 0.75, 1.0)
ENGINES = ("eager", "onnxruntime")


def models():
    """(key, name, model, input shape)."""
    vgg = ModelConfig(name="vgg", variant="11", groups=32, kept=2, norm="batch")
    yield "vgg", "VGG-11 (32x32)", build_model(vgg, {}, (3, 32, 32), 10), (3, 32, 32)
    lenet = ModelConfig(name="lenet", hidden=list(LENET_DEFAULT), norm="batch")
    yield "lenet", "LeNet (28x28)", build_model(lenet, {}, (1, 28, 28), 10), (1, 28, 28)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--models", default="vgg,lenet", help="comma list of vgg, lenet")
    args = ap.parse_args()
    wanted = set(args.models.split(","))
    if not wanted <= {"vgg", "lenet"}:
        ap.error(f"--models must be a comma list of vgg, lenet; got {args.models!r}")
    require_onnx()
    torch.set_num_threads(args.threads)
    print(
        f"threads={args.threads} batch={args.batch} rounds={args.rounds} torch={torch.__version__} "
        f"onnxruntime={importlib.metadata.version('onnxruntime')} "
        f"cpus={os.cpu_count()} load average (1 min) at start={os.getloadavg()[0]:.1f}"
    )
    start = time.perf_counter()
    for key, name, model, shape in models():
        if key not in wanted:
            continue
        torch.manual_seed(0)
        model.eval()
        x = torch.randn(args.batch, *shape)
        flops = {w: count_flops(model, torch.zeros(1, *shape), w) for w in WIDTHS}
        fns = {}
        for w in WIDTHS:
            fns[("eager", w)] = export_width(model, w, x[:2])
            fns[("onnxruntime", w)] = onnx_width(model, w, x[:2], threads=args.threads)
        times: dict[tuple[str, float], list[float]] = {k: [] for k in fns}
        with torch.no_grad():
            for fn in fns.values():  # warm-up: one untimed call each
                measure_latency(fn, x, warmup=1, repeats=1)
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    times[k].append(measure_latency(fn, x, warmup=0, repeats=1).median_ms)
        lat = {k: statistics.median(ts) for k, ts in times.items()}
        print(f"\n### {name}, batch {args.batch} ({args.rounds} interleaved rounds, median)\n")
        print(
            "| width | FLOPs ratio | eager ratio | onnxruntime ratio | eager ms | onnxruntime ms "
            "| onnxruntime / eager |"
        )
        print("|---" * 7 + "|")
        for w in WIDTHS:
            e, o = lat[("eager", w)], lat[("onnxruntime", w)]
            print(
                f"| {w:g} | {flops[w] / flops[1.0]:.3f} | {e / lat[('eager', 1.0)]:.3f} | "
                f"{o / lat[('onnxruntime', 1.0)]:.3f} | {e:.2f} | {o:.2f} | {o / e:.3f} |",
                flush=True,
            )
    print(
        f"\ntotal {time.perf_counter() - start:.0f} s; load average (1 min) at end="
        f"{os.getloadavg()[0]:.1f} (above the CPU count, other processes shared the cores)"
    )


if __name__ == "__main__":
    main()
