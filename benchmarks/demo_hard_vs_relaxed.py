"""Point-weight demo recipe (configs/digits_mlp.yaml): relaxed vs hard masks, 3 seeds, val and test.

.venv/bin/python benchmarks/demo_hard_vs_relaxed.py     # ~3 min on 2 cores
"""

import statistics

import torch

from bnn_nested.config import load_config
from bnn_nested.evaluation.report import evaluate
from bnn_nested.runs import load_run, train_run

torch.set_num_threads(1)
res = {}
for hard in ("false", "true"):
    for seed in range(3):
        cfg = load_config("configs/digits_mlp.yaml", [f"ordering.hard={hard}", f"seed={seed}"])
        out = train_run(cfg, f"runs/demo_hard_vs_relaxed/{hard}{seed}", quiet=True, overwrite=True)
        run = load_run(out)
        for split in ("val", "test"):
            rep = evaluate(run.model, run.splits, [0.25, 0.5, 0.75, 1.0], split=split)
            for w, r in rep.rows.items():
                for k in ("cls/acc", "cls/nll", "cal/ece"):
                    res.setdefault((hard, split, k, w), []).append(r[k])
for split in ("val", "test"):
    for k in ("cls/acc", "cls/nll", "cal/ece"):
        for hard in ("false", "true"):
            cells = [
                f"{statistics.mean(res[(hard, split, k, w)]):.4f}" for w in (0.25, 0.5, 0.75, 1.0)
            ]
            print(f"| {split} {k} | hard={hard} | " + " | ".join(cells) + " |")
