"""Median training-step time of the config's LeNet (nestified) on a mnist5k-sized batch: plain network (no ordering
units, point weights), VOU only, VOU + Gaussian weights, sandwich (4 passes). Same model, same batch.

Variants run interleaved (round-robin) so that load from other processes affects them alike.

Usage:
    .venv/bin/python benchmarks/train_step.py [--quick] [--steps 20] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bnn_nested.config import build_config
from bnn_nested.models import build_model
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer

VARIANTS = {
    # name: (sampler, weights, ordering units present)
    "plain (no ordering)": ("fixed", "point", False),
    "vou": ("vou", "point", True),
    "vou + gaussian": ("vou", "gaussian", True),
    "sandwich": ("sandwich", "point", True),
}


def make_trainer(sampler: str, weight_posterior: str, ordered: bool, batch: int) -> Trainer:
    cfg = build_config(
        {
            "model": {
                "name": "lenet",
                "hidden": [16, 32, 256],
                "groups": 16,
                "kept": 2,
                "weight_posterior": weight_posterior,
                "norm": "batch",
                "order_first": False,  # as in configs/mnist5k_lenet.yaml
                "order_classifier_input": ordered,
                # the plain network: no ordered dimension at all (conv2 too)
                "exclude": [] if ordered else ["conv2.0"],
            },
            "ordering": {"sampler": sampler},
            "regularization": {"kind": "none"},
            "data": {"batch_size": batch},
        }
    )
    torch.manual_seed(0)
    kw = build_sampler(cfg.ordering).ordering_kwargs()
    model = build_model(cfg.model, kw, (1, 28, 28), 10)
    assert bool(model.dims()) == ordered
    return Trainer(model, cfg, n_train=3250, quiet=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 3, 1
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    trainers = {k: make_trainer(*v, batch=args.batch) for k, v in VARIANTS.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for i in range(args.warmup + args.steps):
        for name, tr in trainers.items():
            t0 = time.perf_counter()
            tr.train_step(x, y)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times[name].append(dt)
    base = statistics.median(times["plain (no ordering)"])
    print(
        f"\nlenet [16, 32, 256] (nestified), batch {args.batch}, 28x28, {args.threads} threads, "
        f"median of {args.steps} steps (interleaved)\n"
    )
    print("| variant | median step (ms) | x plain |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {1000 * med:.1f} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
