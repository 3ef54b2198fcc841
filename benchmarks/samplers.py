"""Width samplers on mnist5k with the config's LeNet (nestified): accuracy at widths 0.25/0.5/0.75/1.0, several seeds.

Trains ``vou``, ``nested_dropout``, ``sandwich`` (one run each per seed) and ``fixed`` (one run per
width per seed) through the Python API (``train_run`` / ``load_run``), re-estimates batch-norm
statistics at every evaluated width (``recalibrate_bn``, one pass over the training set) and evaluates
on the test split with ``evaluate_widths``. Prints a markdown table (mean ± std over seeds).

Usage:
    .venv/bin/python benchmarks/samplers.py [--quick] [--epochs 8] [--seeds 0 1 2] [--out runs/bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bnn_nested.config import load_config
from bnn_nested.evaluation.report import evaluate_widths
from bnn_nested.nn import recalibrate_bn
from bnn_nested.runs import load_run, train_run

WIDTHS = [0.25, 0.5, 0.75, 1.0]
SAMPLERS = ["vou", "nested_dropout", "sandwich", "fixed"]


def run_one(config: str, overrides: list[str], out: Path, widths: list[float], samples: int):
    t0 = time.perf_counter()
    cfg = load_config(config, overrides)
    train_run(cfg, out, quiet=True, overwrite=True)
    loaded = load_run(out)
    loader = DataLoader(loaded.splits.train, batch_size=256)
    recalibrate_bn(loaded.model, loader, widths)
    report = evaluate_widths(loaded.model, loaded.splits.test, widths, samples=samples)
    keep = {k: [round(float(p), 3) for p in v] for k, v in loaded.model.keep_probs().items()}
    return {w: report.rows[w]["cls/acc"] for w in widths}, time.perf_counter() - t0, keep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 epoch (smoke run)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samplers", nargs="+", default=SAMPLERS, choices=SAMPLERS)
    ap.add_argument("--weights", default="point", choices=["point", "gaussian"])
    ap.add_argument("--samples", type=int, default=1, help="MC samples at evaluation")
    ap.add_argument("--out", default=None, help="run directories (default: a temporary folder)")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override for every run (repeatable)",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 1, args.seeds[:1]
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    root = Path(args.out or tempfile.mkdtemp(prefix="bnn_samplers_"))
    results: dict[str, dict[float, list[float]]] = {}
    times: dict[str, list[float]] = {}
    keeps: dict[str, object] = {}
    for sampler in args.samplers:
        config = f"configs/mnist5k_lenet_{sampler}.yaml"
        acc: dict[float, list[float]] = {w: [] for w in WIDTHS}
        for seed in args.seeds:
            base = [
                f"seed={seed}",
                f"train.epochs={args.epochs}",
                f"model.weight_posterior={args.weights}",
            ]
            base += args.overrides
            if sampler == "fixed":
                for w in WIDTHS:
                    res, dt, _ = run_one(
                        config,
                        base + [f"ordering.fixed_width={w}"],
                        root / f"{sampler}_w{w}_s{seed}",
                        [w],
                        args.samples,
                    )
                    acc[w].append(res[w])
                    times.setdefault(sampler, []).append(dt)
            else:
                res, dt, keep = run_one(
                    config, base, root / f"{sampler}_s{seed}", WIDTHS, args.samples
                )
                for w in WIDTHS:
                    acc[w].append(res[w])
                times.setdefault(sampler, []).append(dt)
                keeps[f"{sampler}_s{seed}"] = keep
            print(
                f"{sampler} seed {seed}: " + " ".join(f"{w}:{acc[w][-1]:.4f}" for w in WIDTHS),
                file=sys.stderr,
                flush=True,
            )
        results[sampler] = acc
    print(
        f"\nmnist5k, lenet [16, 32, 256], G=16 F=2, weights={args.weights}, "
        f"{args.epochs} epochs, seeds {args.seeds}, MC samples {args.samples}, "
        "BN calibrated per width; test accuracy, mean ± std over seeds\n"
    )
    print("| sampler | " + " | ".join(f"width {w}" for w in WIDTHS) + " | s / run |")
    print("|---|" + "---|" * (len(WIDTHS) + 1))
    for sampler, acc in results.items():
        cells = []
        for w in WIDTHS:
            v = acc[w]
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            cells.append(f"{statistics.mean(v):.4f} ± {sd:.4f}")
        print(f"| {sampler} | " + " | ".join(cells) + f" | {statistics.mean(times[sampler]):.0f} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "acc": {s: {str(w): v for w, v in a.items()} for s, a in results.items()},
                    "keep_probs": keeps,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
