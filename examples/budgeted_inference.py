"""Budgeted inference on digits: train a small nested MLP, select a width under a FLOPs budget,
export it as a torch-only file, serve it in micro-batches, and run an entropy cascade over widths. Runs in well under a minute.

Usage: ``.venv/bin/python examples/budgeted_inference.py [--out runs/budgeted]``
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bnn_nested.config import load_config
from bnn_nested.cost import count_flops
from bnn_nested.deploy.cascade import calibrate_thresholds, cascade_metrics, stage_probs
from bnn_nested.deploy.export import export_width
from bnn_nested.deploy.runtime import MicroBatched
from bnn_nested.deploy.select import Constraints, select_width
from bnn_nested.deploy.serialize import load_exported, save_exported
from bnn_nested.runs import load_run, train_run
from bnn_nested.runs.deployment import run_candidates

warnings.filterwarnings("ignore", message="batch norm: no statistics calibrated")
CONFIG = Path(__file__).parents[1] / "configs" / "digits_mlp.yaml"
WIDTHS = [0.25, 0.5, 0.75, 1.0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp()) / "run"
    cfg = load_config(CONFIG)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": args.epochs})})
    train_run(cfg, out, quiet=True, overwrite=True)

    # 1. select: best validation accuracy within half the full width's FLOPs
    cands = run_candidates(out, WIDTHS, latency=False)
    budget = 0.5 * max(c.flops for c in cands)
    sel = select_width(cands, Constraints(max_flops=budget))
    print(sel.explanation)

    # 2. export the chosen width; reload it with torch alone
    run = load_run(out)
    x_val = torch.stack([run.splits.val[i][0] for i in range(len(run.splits.val))])
    plain = export_width(run.model, sel.chosen.width, x_val[:2])
    path = save_exported(plain, x_val[:2], out / f"width_{sel.chosen.width:g}.pt2")
    err = (load_exported(path)(x_val) - run.model(x_val, width=sel.chosen.width)).abs().max()
    print(f"exported {path.name}: max |difference| to the nested model = {err:.2e}")
    # in a serving loop, run large batches in cache-sized slices (exact; see deploy/runtime.py)
    served = MicroBatched(load_exported(path), micro_batch=64)
    with torch.no_grad():
        err = (served(x_val) - run.model(x_val, width=sel.chosen.width)).abs().max()
    print(f"served in micro-batches of 64: max |difference| = {err:.2e}")

    # 3. cascade: thresholds from validation, evaluated on the test split
    val = DataLoader(run.splits.val, batch_size=512)
    test = DataLoader(run.splits.test, batch_size=512)
    flops = [count_flops(run.model, x_val[:1], w) for w in WIDTHS]
    thr = calibrate_thresholds(stage_probs(run.model, val, WIDTHS)[0], "entropy", quantile=0.8)
    probs, targets = stage_probs(run.model, test, WIDTHS)
    print(f"{'setting':>16} {'acc':>7} {'ECE':>7} {'FLOPs/example':>14}")
    for w, f, p in zip(WIDTHS, flops, probs):
        row = cascade_metrics([p], targets, [], [f])
        print(
            f"{'width ' + format(w, 'g'):>16} {row['cls/acc']:7.4f} {row['cal/ece']:7.4f} {f:14.0f}"
        )
    row = cascade_metrics(probs, targets, thr, flops, "entropy")
    print(
        f"{'cascade q=0.8':>16} {row['cls/acc']:7.4f} {row['cal/ece']:7.4f} "
        f"{row['cost/flops']:14.0f}"
    )


if __name__ == "__main__":
    main()
