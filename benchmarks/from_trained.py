"""From a trained network to a nested one, against nested training from scratch and fixed widths.

mnist5k, LeNet 16-32-256 with BN, point weights, trained on classes 0-7 (8 and 9 are the held-out
OOD set), Adam, 3 seeds. Per seed:

- ``plain``: the plain LeNet trained N epochs (the ``fixed`` sampler at width 1: no masks);
- ``(a) convert``: that network nestified, no ordering, no fine-tuning (BN calibrated per width);
- ``(b) importance <kind>``: the same with importance ordering (``l1``, ``bn_gamma``, ``taylor``);
  the kind used for (c) is the one with the best mean *validation* accuracy at widths < 1 (seed 0);
- ``(c) + distill M``: (b) fine-tuned M epochs with VOU and in-place distillation from the plain
  network (``train.teacher: original``), ordering posteriors started at the importance profile;
- ``(d) scratch``: nested training (VOU) from scratch for N epochs;
- ``(e) fixed``: one network per width, N epochs each.

Reports accuracy, NLL, ECE and held-out-class AUROC (predictive entropy) per width 0.25 / 0.5 /
0.75 / 1 on the test split, and the training compute in epoch-passes (epochs x forward-backward
passes per step; the teacher's forward in (c) is not counted).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/from_trained.py [--seeds 3] [--epochs 8]
[--finetune 4] [--out runs/bench/from_trained.json]``
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

from bnn_nested.config import build_config
from bnn_nested.evaluation.report import evaluate, evaluate_widths
from bnn_nested.models import build_model
from bnn_nested.nest import load_plain_weights, order_by_importance, plain_copy
from bnn_nested.runs import load_run, recalibrate_bn_widths, train_run
from bnn_nested.training.samplers import build_sampler

WIDTHS = [0.25, 0.5, 0.75, 1.0]
KEYS = ["cls/acc", "cls/nll", "cal/ece", "ood/heldout/entropy/auroc"]
KINDS = ["l1", "bn_gamma", "taylor"]


def config(seed: int, epochs: int, **over) -> object:
    raw = {
        "seed": seed,
        "data": {"name": "mnist5k", "held_out_classes": [8, 9]},
        "model": {
            "name": "lenet",
            "hidden": [16, 32, 256],
            "groups": 16,
            "kept": 2,
            "norm": "batch",
        },
        "ordering": {"sampler": "vou"},
        "train": {"epochs": epochs, "lr": 2e-3},
        "eval": {"widths": WIDTHS, "samples": 1},
        "regularization": {"kind": "none"},
    }
    for path, value in over.items():
        node = raw
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return build_config(raw)


def rows_of(report) -> dict[float, dict[str, float]]:
    return {w: {k: v for k, v in r.items() if k in KEYS} for w, r in report.rows.items()}


def converted(plain_path: Path, seed: int, epochs: int, splits, order: str | None):
    """(a) / (b): the plain network nestified (optionally importance-ordered), BN calibrated."""
    cfg = config(seed, epochs, model__init_from=str(plain_path))
    model = build_model(
        cfg.model,
        build_sampler(cfg.ordering).ordering_kwargs(),
        splits.input_shape,
        splits.num_classes,
    )
    load_plain_weights(model, str(plain_path))
    if order is not None:
        loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=False)
        order_by_importance(model, order, loader if order == "taylor" else None, max_batches=20)
    recalibrate_bn_widths(model, splits, WIDTHS)
    return model.eval()


def run_seed(
    seed: int, epochs: int, finetune: int, tmp: Path, kind: str | None, log
) -> tuple[dict, str]:
    res: dict[str, dict] = {}
    out = train_run(
        config(seed, epochs, ordering__sampler="fixed", ordering__fixed_width=1.0),
        tmp / f"plain{seed}",
        quiet=True,
    )
    run = load_run(out)
    splits = run.splits
    plain_path = tmp / f"plain{seed}.pt"
    torch.save(plain_copy(run.model).state_dict(), plain_path)
    res["plain"] = rows_of(evaluate(run.model, splits, [1.0], ood=["heldout"], seed=seed))
    log(f"seed {seed}: plain done")
    model = converted(plain_path, seed, epochs, splits, None)
    res["(a) convert"] = rows_of(evaluate(model, splits, WIDTHS, ood=["heldout"], seed=seed))
    val = {}
    for k in KINDS:
        model = converted(plain_path, seed, epochs, splits, k)
        res[f"(b) importance {k}"] = rows_of(
            evaluate(model, splits, WIDTHS, ood=["heldout"], seed=seed)
        )
        v = evaluate_widths(model, splits.val, WIDTHS[:-1]).rows
        val[k] = statistics.mean(r["cls/acc"] for r in v.values())
    if kind is None:
        kind = max(val, key=val.get)
        log(f"seed {seed}: validation accuracy at widths < 1 by importance {val}; chose {kind}")
    cfg = config(
        seed,
        finetune,
        model__init_from=str(plain_path),
        model__order="importance",
        model__importance=kind,
        ordering__init="importance",
        train__teacher="original",
        train__lr=1e-3,
    )
    fine = load_run(train_run(cfg, tmp / f"fine{seed}", quiet=True))
    res[f"(c) {kind} + distill {finetune}"] = rows_of(
        evaluate(fine.model, splits, WIDTHS, ood=["heldout"], seed=seed)
    )
    log(f"seed {seed}: fine-tuned")
    scratch = load_run(train_run(config(seed, epochs), tmp / f"scratch{seed}", quiet=True))
    res["(d) scratch"] = rows_of(
        evaluate(scratch.model, splits, WIDTHS, ood=["heldout"], seed=seed)
    )
    res["(e) fixed"] = {}
    for w in WIDTHS:
        cfg = config(seed, epochs, ordering__sampler="fixed", ordering__fixed_width=w)
        r = load_run(train_run(cfg, tmp / f"fixed{seed}-{w}", quiet=True))
        res["(e) fixed"].update(
            rows_of(evaluate(r.model, r.splits, [w], ood=["heldout"], seed=seed))
        )
    log(f"seed {seed}: scratch and fixed done")
    return res, kind


def markdown(results: dict, epochs: int, finetune: int) -> str:
    compute = {
        "plain": epochs,
        "(a) convert": epochs,
        "(d) scratch": epochs,
        "(e) fixed": 4 * epochs,
    }
    out = []
    for key in KEYS:
        out += [
            f"**{key}**",
            "",
            "| method | epoch-passes | w=0.25 | w=0.5 | w=0.75 | w=1 |",
            "|---|---|---|---|---|---|",
        ]
        for method, per_w in results.items():
            cost = compute.get(method, epochs + (finetune if method.startswith("(c)") else 0))
            cells = []
            for w in WIDTHS:
                vals = per_w.get(w, {}).get(key)
                cells.append(
                    "-"
                    if not vals
                    else f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.3f}"
                )
            out.append(f"| {method} | {cost} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--finetune", type=int, default=4)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", file=sys.stderr, flush=True)

    results: dict[str, dict[float, dict[str, list[float]]]] = {}
    kind = None
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(a.seeds):
            res, kind = run_seed(seed, a.epochs, a.finetune, Path(tmp), kind, log)
            for method, per_w in res.items():
                for w, row in per_w.items():
                    for k, v in row.items():
                        results.setdefault(method, {}).setdefault(float(w), {}).setdefault(
                            k, []
                        ).append(v)
    print(
        f"\nmnist5k LeNet, {a.seeds} seed(s), N = {a.epochs} epochs, M = {a.finetune}, mean ± std over seeds\n"
    )
    print(markdown(results, a.epochs, a.finetune))
    if a.out:
        Path(a.out).write_text(
            json.dumps({m: {str(w): r for w, r in v.items()} for m, v in results.items()}, indent=1)
        )


if __name__ == "__main__":
    main()
