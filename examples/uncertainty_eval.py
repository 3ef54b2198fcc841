"""Uncertainty at every width, from Python (what `bnn-nested evaluate` does), on digits.

    .venv/bin/python examples/uncertainty_eval.py [--epochs 10] [--out runs/example_uncertainty]

Trains a small nested MLP with dropout on classes 0-7 of scikit-learn's digits, then reports
accuracy, NLL, ECE and OOD detection (held-out classes 8-9 and natural-image patches; higher score =
more OOD) with 8 Monte-Carlo samples at four widths, and writes report.json / report.md / plots.
"""

from __future__ import annotations

import argparse

from bnn_nested.config import build_config
from bnn_nested.evaluation.report import evaluate
from bnn_nested.runs import load_run, train_run


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default="runs/example_uncertainty")
    args = p.parse_args(argv)
    cfg = build_config(
        {
            "data": {"name": "digits", "held_out_classes": [8, 9]},
            "model": {
                "name": "mlp",
                "hidden": [128, 128],
                "groups": 8,
                "kept": 1,
                "dropout": 0.2,
            },
            "train": {"epochs": args.epochs},
            "regularization": {"kind": "none"},
        }
    )
    run = load_run(train_run(cfg, args.out, quiet=True, overwrite=True))
    report = evaluate(
        run.model, run.splits, [0.25, 0.5, 0.75, 1.0], samples=8, ood=["heldout", "patches"]
    )
    print(report.table())
    report.write(args.out)
    print(f"written: {args.out}/report.md and {args.out}/plots/")


if __name__ == "__main__":
    main()
