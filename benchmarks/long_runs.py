"""Do the shipped configs survive longer training? (issue 25, item 3) Each shipped config trained
``--factor`` times its epochs, against the same network trained plainly (point weights, one fixed
width 1.0, no ordering) for the same epochs; full-width test accuracy (the config's Monte-Carlo
samples). The target: within 0.5 point of the plain network.

    .venv/bin/python benchmarks/long_runs.py --out runs/bench/long_runs.json
    .venv/bin/python benchmarks/long_runs.py --configs configs/digits_mlp.yaml --factor 1   # smoke

``cifar10_vgg11wide.yaml`` is left out by default: its data set is not bundled (and 4 x 600 epochs
do not fit a CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnn_nested.config import load_config
from bnn_nested.evaluation import evaluate
from bnn_nested.runs import load_run, train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [
    "configs/digits_mlp.yaml",
    "configs/mnist5k_lenet.yaml",
    "configs/mnist5k_lenet_paper.yaml",
    "configs/mnist5k_lenet_vou.yaml",
    "configs/mnist5k_lenet_nested_dropout.yaml",
    "configs/mnist5k_lenet_sandwich.yaml",
    "configs/mnist5k_vit.yaml",
]
PLAIN = [
    "ordering.sampler=fixed",
    "ordering.fixed_width=1.0",
    "model.weight_posterior=point",
]


def full_width_accuracy(path: str, overrides: list[str], tmp: Path) -> tuple[float, float]:
    cfg = load_config(ROOT / path, overrides)
    t0 = time.perf_counter()
    out = train_run(cfg, tmp / f"{Path(path).stem}-{len(list(tmp.iterdir()))}", quiet=True)
    run = load_run(out)
    rep = evaluate(run.model, run.splits, [1.0], samples=cfg.eval.samples, seed=cfg.seed)
    return float(rep.rows[1.0]["cls/acc"]), time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--factor", type=int, default=4)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res: dict = {"factor": a.factor, "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for path in a.configs:
            epochs = load_config(ROOT / path).train.epochs * a.factor
            over = [f"train.epochs={epochs}"]
            acc, secs = full_width_accuracy(path, over, Path(tmp))
            plain, psecs = full_width_accuracy(path, over + PLAIN, Path(tmp))
            res["runs"][path] = {"epochs": epochs, "acc": acc, "plain": plain}
            print(
                f"[done] {path}: {acc:.4f} vs plain {plain:.4f} ({secs:.0f} s + {psecs:.0f} s)",
                file=sys.stderr,
            )
    lines = [
        f"Shipped configs trained {a.factor}x their epochs, full-width test accuracy (seed of the "
        "config):",
        "",
        "| config | epochs | shipped recipe | plain network | difference (points) | within 0.5? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for path, r in res["runs"].items():
        d = 100 * (r["acc"] - r["plain"])
        lines.append(
            f"| {Path(path).name} | {r['epochs']} | {r['acc']:.4f} | {r['plain']:.4f} | {d:+.1f} | "
            f"{'yes' if d >= -0.5 else 'no'} |"
        )
    print("\n".join(lines))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
