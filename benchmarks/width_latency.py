"""Latency of sub-networks vs their FLOPs: masked-full, sliced, and exported with each speed lever.

For the configs' VGG "11" (3x32x32) and LeNet (1x28x28), nestified, untrained (latency does not depend on the
weights), on CPU, at batch 1 and 256: width, FLOPs ratio (= FLOPs(r) / FLOPs(1), FLOPs = 2 x MACs),
and latency ratio (median latency at r / median at width 1 of the *same* variant) for

- ``masked``: the nestified model, full network with the width applied as a 0/1 mask on the
  inputs of the layers consuming each ordered dimension (reference style);
- ``export``: :func:`~bnn_nested.deploy.export.export_width` without BN folding;
- ``fold``: exported with BN folded into the convolutions;
- ``fold+cl``: folded, channels-last weights and inputs;
- ``fold+cl+mb``: that, run in micro-batches of ``--micro-batch`` examples (a comma list gives
  one column ``fold+cl+mbN`` per size, for a sweep)
  (:func:`~bnn_nested.deploy.runtime.inference_module` with a fixed size;
  ``profile_widths(mode="exported")`` instead tunes the size per width);
- with ``--compile`` (slow to build on 2 cores): ``compile`` = ``torch.compile`` of ``fold``,
  ``freeze`` = the same with Inductor freezing (:func:`~bnn_nested.deploy.runtime.
  compile_for_inference`), ``freeze+mb`` = ``freeze`` in micro-batches (of the first size).

Usage: ``.venv/bin/python benchmarks/width_latency.py [--quick] [--threads 2] [--compile]
[--rounds N] [--micro-batch 64 | --micro-batch 16,32,64,128] [--models vgg,lenet]``
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from torch import nn

from bnn_nested.config import ModelConfig
from bnn_nested.cost import count_flops
from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.runtime import MicroBatched, compile_for_inference
from bnn_nested.deploy.timing import measure_latency
from bnn_nested.models import build_model
from bnn_nested.models.plain import LENET_DEFAULT
from bnn_nested.nn.batchnorm import UncalibratedWidthWarning

warnings.filterwarnings("ignore", category=UncalibratedWidthWarning)
WIDTHS = (0.25, 0.5, 0.75, 1.0)


def _leaves(exported: nn.Module, block: str) -> list[nn.Module]:
    """The modules an exported network runs inside ``block``, in order (BN folded away)."""
    return [
        m
        for n, m in exported.named_modules()
        if n.startswith(block + ".") and not list(m.children())
    ]


def models():
    """(key, name, model, input shape, prefix): ``prefix(exported)`` is the part of an exported module
    that no width truncates (the unordered first conv block and the pool after it)."""
    vgg = ModelConfig(name="vgg", variant="11", groups=32, kept=2, norm="batch")
    yield (
        "vgg",
        "VGG-11 (32x32)",
        build_model(vgg, {}, (3, 32, 32), 10).eval(),
        (3, 32, 32),
        lambda m: nn.Sequential(*_leaves(m, "features.0"), m.get_submodule("features.1")),
    )
    lenet = ModelConfig(name="lenet", hidden=list(LENET_DEFAULT), norm="batch")
    yield (
        "lenet",
        "LeNet (28x28)",
        build_model(lenet, {}, (1, 28, 28), 10).eval(),
        (1, 28, 28),
        lambda m: nn.Sequential(*_leaves(m, "conv1"), nn.MaxPool2d(2)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="repeats 3 (batch 256) / 10 (batch 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds (default 10 / 50)")
    ap.add_argument("--micro-batch", default="64", help="size, or a comma list for a sweep")
    ap.add_argument("--models", default="vgg,lenet", help="comma list of vgg, lenet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    sizes = [int(m) for m in args.micro_batch.split(",")]
    print(
        f"threads={args.threads} torch={torch.__version__} quick={args.quick} "
        f"micro_batch={args.micro_batch}"
    )
    wanted = set(args.models.split(","))
    if not wanted <= {"vgg", "lenet"}:
        ap.error(f"--models must be a comma list of vgg, lenet; got {args.models!r}")
    for key, name, model, shape, prefix in models():
        if key not in wanted:
            continue
        flops = {w: count_flops(model, torch.zeros(1, *shape), w) for w in WIDTHS}
        for bs in batches:
            reps = (3 if bs >= 64 else 10) if args.quick else (10 if bs >= 64 else 50)
            reps = args.rounds or reps
            warm = 1 if bs >= 64 else 3
            x = torch.randn(bs, *shape)
            xcl = x.contiguous(memory_format=torch.channels_last)
            fns: dict[tuple[str, float], tuple] = {}
            for w in WIDTHS:
                fns[("masked", w)] = (lambda t, w=w, m=model: m(t, width=w), x)
                fns[("export", w)] = (export_width(model, w, x[:2], fold_batchnorm=False), x)
                fns[("fold", w)] = (export_width(model, w, x[:2]), x)
                fold_cl = export_width(model, w, x[:2], channels_last=True)
                fns[("fold+cl", w)] = (fold_cl, xcl)
                if w == 1.0:
                    fns[("prefix", w)] = (prefix(fold_cl), xcl)
                for mb in sizes:
                    col = "fold+cl+mb" if len(sizes) == 1 else f"fold+cl+mb{mb}"
                    fns[(col, w)] = (MicroBatched(fold_cl, mb, True), x)
                if args.compile:
                    plain = compile_for_inference(export_width(model, w, x[:2]), freezing=False)
                    fns[("compile", w)] = (plain, x)
                    # separate compiled objects, static shapes: the micro-batch never changes
                    # the graph the batch of 256 runs
                    kept = compile_for_inference(export_width(model, w, x[:2]))
                    fns[("freeze", w)] = (kept, x)
                    frozen_mb = compile_for_inference(export_width(model, w, x[:2]))
                    fns[("freeze+mb", w)] = (MicroBatched(frozen_mb, sizes[0]), x)
            # interleaved: every round times each (variant, width) once, so load changes on the
            # shared CPU hit all of them alike; median over rounds
            times: dict[tuple[str, float], list[float]] = {k: [] for k in fns}
            with torch.no_grad():
                for fn, inp in fns.values():
                    measure_latency(fn, inp, warmup=warm, repeats=1)
                for _ in range(reps):
                    for k, (fn, inp) in fns.items():
                        times[k].append(measure_latency(fn, inp, warmup=0, repeats=1).median_ms)
            lat: dict[str, dict[float, float]] = {}
            for (v, w), ts in times.items():
                lat.setdefault(v, {})[w] = statistics.median(ts)
            prefix_ms = lat.pop("prefix")[1.0]
            cols = list(lat)
            print(f"\n### {name}, batch {bs} ({reps} interleaved rounds, median)\n")
            print(
                "| width | FLOPs ratio | "
                + " | ".join(f"{c} ratio" for c in cols)
                + " | "
                + " | ".join(f"{c} ms" for c in cols)
                + " |"
            )
            print("|---" * (2 + 2 * len(cols)) + "|")
            for w in WIDTHS:
                ratios = [f"{lat[c][w] / lat[c][1.0]:.3f}" for c in cols]
                ms = [f"{lat[c][w]:.2f}" for c in cols]
                print(
                    f"| {w:g} | {flops[w] / flops[1.0]:.3f} | "
                    + " | ".join(ratios)
                    + " | "
                    + " | ".join(ms)
                    + " |",
                    flush=True,
                )
            print(
                f"\nuntruncated prefix (first conv block + pool, fold+cl): {prefix_ms:.2f} ms = "
                f"{prefix_ms / lat['fold+cl'][1.0]:.3f} of fold+cl at width 1 (a floor for every "
                "width's fold+cl ratio)",
                flush=True,
            )


if __name__ == "__main__":
    main()
