"""Per-layer allocation vs uniform widths: accuracy against FLOPs (the Pareto front).

Keeps, in every ordered layer, the groups whose learned keep probability P(b >= k) >= t, for a sweep
of thresholds t, and compares with uniform widths. Batch-norm statistics are calibrated for every
evaluated sub-network on the training split. FLOPs = 2 x MACs per example.

    .venv/bin/python benchmarks/allocation.py                 # trains configs/mnist5k_lenet.yaml (~1-2 min)
    .venv/bin/python benchmarks/allocation.py --run runs/NAME # reuse a trained run
    .venv/bin/python benchmarks/allocation.py --set model.name=resnet --set model.variant=20 ...
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bnn_nested.config import load_config
from bnn_nested.deploy.allocation import pareto_front, plot_sweep, sweep, threshold_allocation
from bnn_nested.nn.batchnorm import nested_norms, recalibrate_bn
from bnn_nested.runs import load_run, train_run

THRESHOLDS = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]
UNIFORM = [0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="trained run directory (default: train one)")
    ap.add_argument("--config", default="configs/mnist5k_lenet.yaml")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override"
    )
    ap.add_argument("--plot", default="docs/results/allocation.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run
        if run_dir is None:
            over = [f"train.epochs={args.epochs}"] if args.epochs else []
            over += args.set
            run_dir = train_run(load_config(args.config, over), Path(tmp) / "run", quiet=True)
        run = load_run(run_dir)
    model, splits = run.model, run.splits
    allocs = [threshold_allocation(model, t) for t in THRESHOLDS]
    if nested_norms(model):
        recalibrate_bn(model, DataLoader(splits.train, batch_size=512), allocs + UNIFORM)
    test = DataLoader(splits.test, batch_size=512)
    example = splits.test[0][0].unsqueeze(0)
    allocated, uniform = sweep(model, test, example, THRESHOLDS, UNIFORM)
    full = max(p.flops for p in uniform)
    front = {id(p) for p in pareto_front(allocated + uniform)}
    lines = [
        "| sub-network | groups per layer | FLOPs ratio | test accuracy | ECE | on front |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(allocated + uniform, key=lambda p: p.flops):
        groups = p.width if isinstance(p.width, dict) else "uniform"
        lines.append(
            f"| {p.label} | {groups} | {p.flops / full:.3f} | {p.metrics['cls/acc']:.4f} | "
            f"{p.metrics['cal/ece']:.4f} | {'yes' if id(p) in front else ''} |"
        )
    table = "\n".join(lines)
    plot_sweep(allocated, uniform, args.plot)
    print(table)
    print(f"plot: {args.plot}")
    return table


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
