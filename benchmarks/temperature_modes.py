"""Temperature of a Bayesian predictive, per sample or pooled (issue 28, item 3).

For each trained run directory: re-estimate batch norm per width, predict the validation and test
splits once per width with ``S`` Monte-Carlo samples (seeded), fit one temperature per width on
validation in each mode (docs/METHODS.md#temperature-scaling-per-width) on those same predictions,
and report test ECE / NLL / accuracy before scaling and after each mode (means over the widths).
Nothing is written into the runs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/temperature_modes.py RUN [RUN ...] --samples 8
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from torch.utils.data import DataLoader

from bnn_nested.evaluation.calibration import TEMPERATURE_MODES, apply_temperature, fit_temperature
from bnn_nested.evaluation.metrics import classification_report, mutual_information
from bnn_nested.evaluation.prediction import predict_loader
from bnn_nested.runs import load_run

KEYS = ("cal/ece", "cls/nll", "cls/acc")


def measure(run_dir: str, samples: int, seed: int = 0) -> dict:
    run = load_run(run_dir)
    cfg = run.config
    widths = list(cfg.eval.widths)
    run.recalibrate_bn(widths)
    bs = cfg.data.eval_batch_size
    torch.manual_seed(seed)
    rows = {}
    for w in widths:
        pv, yv = predict_loader(run.model, DataLoader(run.splits.val, batch_size=bs), w, samples)
        pt, yt = predict_loader(run.model, DataLoader(run.splits.test, batch_size=bs), w, samples)
        row = {f"raw/{k}": classification_report(pt, yt, cfg.eval.ece_bins)[k] for k in KEYS}
        row["raw/mi"] = float(mutual_information(pt).mean())  # how much the samples disagree
        for mode in TEMPERATURE_MODES:
            t = fit_temperature(pv, yv, mode=mode).temperature
            rep = classification_report(apply_temperature(pt, t), yt, cfg.eval.ece_bins)
            row[f"{mode}/T"] = float(t)
            row.update({f"{mode}/{k}": rep[k] for k in KEYS})
        rows[f"{w:g}"] = row
    mean = {k: statistics.fmean(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    return {"run": run_dir, "data": cfg.data.name, "seed": cfg.seed, "widths": rows, "mean": mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--out", default=None, help="JSON file for every number")
    args = ap.parse_args()
    results = [measure(r, args.samples) for r in args.runs]
    print(
        "| data | seed | ECE raw | ECE per_sample | ECE pooled | NLL raw | NLL per_sample "
        "| NLL pooled | acc raw | acc per_sample | acc pooled | mean MI |"
    )
    print("|---|---|" + "---:|" * 10)
    for r in results:
        m = r["mean"]
        cells = [m[f"{p}/{k}"] for k in KEYS for p in ("raw", *TEMPERATURE_MODES)] + [m["raw/mi"]]
        print(f"| {r['data']} | {r['seed']} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    for data in sorted({r["data"] for r in results}):
        ms = [r["mean"] for r in results if r["data"] == data]
        cells = [
            statistics.fmean(m[f"{p}/{k}"] for m in ms)
            for k in KEYS
            for p in ("raw", *TEMPERATURE_MODES)
        ] + [statistics.fmean(m["raw/mi"] for m in ms)]
        print(f"| {data} | mean | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
