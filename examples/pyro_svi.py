"""Train a nested LeNet with Pyro's SVI and TraceMeanField_ELBO instead of the built-in trainer.

The model/guide pair (``bnn_nested.training.pyro_svi.PyroNestedModel``) puts each ordering unit's
truncation mask behind a ``pyro.sample`` site (Downhill prior in the model, the learned Downhill
posterior in the guide, KL analytic) and the labels behind ``pyro.sample("obs", ...)`` in a
subsampled ``pyro.plate`` scaled to the training-set size. Per example, the loss equals the built-in
trainer's ``vou`` loss (tested in tests/training/test_pyro_svi.py).

Usage:
    .venv/bin/python examples/pyro_svi.py [--epochs 1] [--steps N] [--data digits|mnist5k]
"""

from __future__ import annotations

import argparse

import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from torch.utils.data import DataLoader

from bnn_nested.config import build_config
from bnn_nested.data import load_dataset
from bnn_nested.evaluation.report import evaluate_widths
from bnn_nested.models import build_model
from bnn_nested.nn import recalibrate_bn
from bnn_nested.training.pyro_svi import PyroNestedModel
from bnn_nested.training.samplers import build_sampler


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="digits", choices=["digits", "mnist5k"])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="stop after this many steps")
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    pyro.clear_param_store()
    cfg = build_config(
        {
            "data": {"name": args.data, "batch_size": 64},
            "model": {
                "name": "lenet",
                "hidden": [16, 32, 64],
                "groups": 16,
                "kept": 2,
                "weight_posterior": "gaussian",
                "norm": "batch",
            },
            "ordering": {"sampler": "vou"},
        }
    )
    splits = load_dataset(cfg.data, seed=cfg.seed)
    net = build_model(
        cfg.model,
        build_sampler(cfg.ordering).ordering_kwargs(),
        splits.input_shape,
        splits.num_classes,
    )
    pm = PyroNestedModel(net, n_train=splits.num_train)
    svi = SVI(pm.model, pm.guide, pyro.optim.Adam({"lr": args.lr}), TraceMeanField_ELBO())
    loader = DataLoader(splits.train, batch_size=cfg.data.batch_size, shuffle=True)
    step = 0
    for epoch in range(args.epochs):
        total = 0.0
        for x, y in loader:
            total += svi.step(x, y) / splits.num_train  # per-example negative ELBO
            step += 1
            if args.steps is not None and step >= args.steps:
                break
        print(f"epoch {epoch + 1}: mean loss per example {total / max(step, 1):.4f}")
        if args.steps is not None and step >= args.steps:
            break
    widths = [0.25, 0.5, 1.0]
    recalibrate_bn(net, DataLoader(splits.train, batch_size=256), widths)
    print(evaluate_widths(net, splits.test, widths).table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
