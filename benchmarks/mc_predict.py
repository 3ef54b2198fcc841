"""Monte-Carlo prediction time: per-sample weight draws (now) vs local reparameterisation (before).

``predict(model, x, samples=S)`` now draws one weight tensor per Monte-Carlo sample (one
convolution / matrix product per sample and layer) and runs one sample per forward pass; before, it
ran the training estimator, the local reparameterisation trick (two convolutions per layer: mean and
variance), over all ``S x B`` inputs batched in one forward pass. The middle column batches the
weight draws the old way (``chunk=None``).
The "before" column forces the Bayesian layers onto that path (the layers' ``training`` flag; batch
norm and ordering units stay in eval). Both run in one interleaved loop; medians and the spread
(min-max) over rounds; one plain-weight forward pass of the same architecture as the unit.

    .venv/bin/python benchmarks/mc_predict.py                      # LeNet and VGG-11, batch 256, S = 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager

import torch

from bnn_nested.config import build_config
from bnn_nested.evaluation.prediction import predict
from bnn_nested.models import build_model
from bnn_nested.nn.nested import NestedMixin
from bnn_nested.training.samplers import build_sampler

ARCHS = {
    "lenet": (
        {"name": "lenet", "hidden": [16, 32, 256], "groups": 16, "kept": 2, "norm": "batch"},
        (1, 28, 28),
    ),
    "vgg11": (
        {"name": "vgg", "variant": "11", "groups": 16, "kept": 2, "norm": "batch"},
        (3, 32, 32),
    ),
}


@contextmanager
def lrt_prediction(model):
    """Bayesian layers take their training path (LRT) while the rest of the model stays in eval."""
    layers = [m for m in model.modules() if isinstance(m, NestedMixin) and m.bayesian]
    for m in layers:
        m.training = True
    try:
        yield
    finally:
        for m in layers:
            m.training = False


def build(arch: str, weight_posterior: str):
    spec, shape = ARCHS[arch]
    cfg = build_config(
        {"model": {**spec, "weight_posterior": weight_posterior}, "ordering": {"sampler": "vou"}}
    )
    torch.manual_seed(0)
    ordering = build_sampler(cfg.ordering).ordering_kwargs()
    return build_model(cfg.model, ordering, shape, 10).eval(), shape


def time_arch(arch: str, batch: int, samples: int, rounds: int) -> dict[str, list[float]]:
    gauss, shape = build(arch, "gaussian")
    plain, _ = build(arch, "point")
    x = torch.randn((batch,) + shape)

    def before():  # the LRT over all S x B inputs in one forward pass (the old default)
        with lrt_prediction(gauss):
            predict(gauss, x, samples=samples, chunk=None)

    cases = {
        "plain": lambda: predict(plain, x),
        "before": before,
        "batched": lambda: predict(gauss, x, samples=samples, chunk=None),
        "now": lambda: predict(gauss, x, samples=samples),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(rounds):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", default="lenet,vgg11")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    lines = [
        f"batch {args.batch}, S = {args.samples}, {args.rounds} interleaved rounds, "
        f"{torch.get_num_threads()} thread(s); median (min-max) seconds",
        "",
        "| arch | plain forward (1 pass) | MC before (LRT, S batched) | weight draws, S batched "
        "| MC now (weight draws, 1 sample per pass) | now / before | now / plain pass |",
        "|---|---|---|---|---|---|---|",
    ]
    for arch in args.archs.split(","):
        times = time_arch(arch, args.batch, args.samples, args.rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        cell = {k: f"{med[k]:.3f} ({min(v):.3f}-{max(v):.3f})" for k, v in times.items()}
        lines.append(
            f"| {arch} | {cell['plain']} | {cell['before']} | {cell['batched']} | {cell['now']} | "
            f"{med['now'] / med['before']:.2f} | {med['now'] / med['plain']:.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
