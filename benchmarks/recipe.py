"""Which ingredients make learned ordering (VOU) worth using? Ablation and baselines, 3 seeds.

Every variant trains a Bayesian nested network (Gaussian weights, ``model.weight_posterior: gaussian``) with
its own correct objective (issue 14: Monte-Carlo ordering KL for relaxed masks, categorical for hard
masks, weight KL weighted by what each sampler trains) on classes 0-7, and is evaluated with 8
Monte-Carlo samples at widths 0.25 / 0.5 / 0.75 / 1: on the validation split (accuracy, NLL, ECE:
what the recipe is chosen on) and on the test split (accuracy, NLL, ECE, held-out-class AUROC of
the predictive entropy: what is reported). Training wall time per run is the cost column.

Variants: ``paper`` (relaxed masks, geometric prior pi = 0.95, tau = 1, init 3, keep-weighted
weight KL: the seed paper's recipe with the corrected KL) and one ingredient changed at a time, plus
combinations; baselines ``nested_dropout``, ``sandwich``, ``fixed`` (one network per width) with
Gaussian weights, and ``mc_dropout`` (point weights, dropout 0.2 kept at test time, the ``default``
variant's masks). ``--bn-mc`` also re-estimates batch norm under the Monte-Carlo forward
(``recalibrate_bn(stochastic=True)``) and reports test metrics under ``bnmc/``.

    .venv/bin/python benchmarks/recipe.py --data digits --seeds 3 --out docs/results/recipe_digits.json
    .venv/bin/python benchmarks/recipe.py --data mnist5k --seeds 3 --epochs 8 --bn-mc \
        --out docs/results/recipe_mnist5k.json
    .venv/bin/python benchmarks/recipe.py --from-json docs/results/recipe_mnist5k.json   # tables
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

# the method comparison's model table and helpers (run as a script: benchmarks/ is on sys.path)
from methods import MODEL, _fmt, _merge
from torch.utils.data import DataLoader

from bnn_nested.config import build_config
from bnn_nested.evaluation.report import evaluate
from bnn_nested.nn.batchnorm import nested_norms, recalibrate_bn
from bnn_nested.runs import load_run, train_run

WIDTHS = [0.25, 0.5, 0.75, 1.0]
LR = {"digits": 1e-3, "mnist5k": 2e-3}
GAUSS = {"model": {"weight_posterior": "gaussian", "init_log_alpha": -8.0}}
ANNEAL = {"schedule": "exponential", "temperature": 1.0, "temperature_min": 0.2, "anneal_rate": 0.3}
#: name -> config overrides (on top of the ``paper`` recipe with Gaussian weights)
VARIANTS: dict[str, dict] = {
    "paper": {},
    "hard": {"ordering": {"hard": True}},
    "uniform": {"ordering": {"prior": "uniform"}},
    "anneal": {"ordering": ANNEAL},
    "per_example": {"ordering": {"per_example": True}},
    "distill": {"ordering": {"vou_distill": True}},
    "weight_kl_all": {"ordering": {"weight_kl": "all"}},
    "kl_0.1": {"ordering": {"kl_weight": 0.1}},
    "hard+uniform": {"ordering": {"hard": True, "prior": "uniform"}},
    "hard+uniform+distill": {"ordering": {"hard": True, "prior": "uniform", "vou_distill": True}},
    "hard+uniform+kl_all": {"ordering": {"hard": True, "prior": "uniform", "weight_kl": "all"}},
    "hard+olr": {"ordering": {"hard": True, "lr": 0.02}},  # ordering learning rate 10-20x
    # baselines, each with its own objective (Gaussian weights unless said)
    "nested_dropout": {"ordering": {"sampler": "nested_dropout"}},
    "sandwich": {"ordering": {"sampler": "sandwich"}},
    "fixed": {"ordering": {"sampler": "fixed"}},
    "mc_dropout": {"model": {"weight_posterior": "point", "dropout": 0.2}},
}
#: the variant ``mc_dropout`` borrows its masks from (set after the ablation chose it)
DEFAULT = "paper"
VAL_KEYS = ["cls/acc", "cls/nll", "cal/ece"]
TEST_KEYS = ["cls/acc", "cls/nll", "cal/ece", "ood/heldout/entropy/auroc"]


def config(data: str, variant: str, seed: int, epochs: int, width: float | None):
    raw = {
        "seed": seed,
        "data": {"name": data, "held_out_classes": [8, 9]},
        "model": MODEL[data],
        # the paper's relaxed masks, named (the library's default is hard masks since issue 28)
        "ordering": {"sampler": "vou", "hard": False},
        "train": {"epochs": epochs, "lr": LR[data]},
        "eval": {"widths": WIDTHS, "samples": 8},
        "regularization": {"kind": "none"},
    }
    raw = _merge(raw, GAUSS)
    if variant == "mc_dropout":
        raw = _merge(raw, VARIANTS[DEFAULT])
    raw = _merge(raw, VARIANTS[variant])
    if width is not None:
        raw = _merge(raw, {"ordering": {"fixed_width": width}})
    return build_config(raw)


def run_one(data, variant, seed, epochs, width, tmp: Path, bn_mc: bool) -> dict:
    cfg = config(data, variant, seed, epochs, width)
    t0 = time.perf_counter()
    out = train_run(cfg, tmp / f"{data}-{variant}-{seed}-{width}", quiet=True)
    train_s = time.perf_counter() - t0
    run = load_run(out)
    widths = WIDTHS if width is None else [width]
    rows: dict[float, dict[str, float]] = {w: {"cost/train_s": train_s} for w in widths}
    val = evaluate(run.model, run.splits, widths, samples=8, split="val", seed=seed)
    test = evaluate(run.model, run.splits, widths, samples=8, ood=["heldout"], seed=seed)
    for w in widths:
        rows[w].update({f"val/{k}": val.rows[w][k] for k in VAL_KEYS})
        rows[w].update({k: test.rows[w][k] for k in TEST_KEYS})
    if bn_mc and nested_norms(run.model) and cfg.model.weight_posterior == "gaussian":
        loader = DataLoader(run.splits.train, batch_size=cfg.data.eval_batch_size)
        torch.manual_seed(seed)
        recalibrate_bn(run.model, loader, widths, stochastic=True)
        again = evaluate(run.model, run.splits, widths, samples=8, seed=seed)
        for w in widths:
            rows[w].update({f"bnmc/{k}": again.rows[w][k] for k in VAL_KEYS})
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", choices=sorted(MODEL))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--default", default=DEFAULT, help="variant whose masks mc_dropout uses")
    p.add_argument("--bn-mc", action="store_true")
    p.add_argument("--out", default=None, help="write (and append to) this results JSON")
    p.add_argument(
        "--from-json", default=None, help="print tables of saved JSONs (comma-separated)"
    )
    args = p.parse_args(argv)
    globals()["DEFAULT"] = args.default
    if args.from_json:
        results = {}
        for path in args.from_json.split(","):
            results.update(_load(Path(path)))
        print(markdown(results))
        return results
    names = [v for v in args.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    results = _load(Path(args.out)) if args.out and Path(args.out).exists() else {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        run_one(args.data, names[0], 99, 1, None, Path(tmp), False)  # warm-up, not recorded
        for name in names:
            acc: dict[float, dict[str, list[float]]] = {}
            for seed in range(args.seeds):
                for w in WIDTHS if name == "fixed" else [None]:
                    rows = run_one(args.data, name, seed, args.epochs, w, Path(tmp), args.bn_mc)
                    for width, row in rows.items():
                        for k, v in row.items():
                            acc.setdefault(width, {}).setdefault(k, []).append(v)
            results[name] = acc
            print(f"[{time.time() - t0:6.0f}s] {name} done", file=sys.stderr, flush=True)
            if args.out:
                _save(Path(args.out), results)
    print(markdown(results))
    return results


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({m: {str(w): r for w, r in v.items()} for m, v in results.items()}, indent=1)
    )


def _load(path: Path) -> dict:
    saved = json.loads(path.read_text())
    return {m: {float(w): r for w, r in v.items()} for m, v in saved.items()}


def selection(results: dict) -> list[tuple[float, float, str]]:
    """``(mean val NLL, mean val accuracy, variant)`` over widths and seeds, best (lowest NLL) first;
    ``fixed`` (a network per width, not a recipe for one network) is left out."""
    out = []
    for name, rows in results.items():
        if name == "fixed" or not all("val/cls/nll" in rows.get(w, {}) for w in WIDTHS):
            continue
        nll = statistics.mean(v for w in WIDTHS for v in rows[w]["val/cls/nll"])
        acc = statistics.mean(v for w in WIDTHS for v in rows[w]["val/cls/acc"])
        out.append((nll, acc, name))
    return sorted(out)


def markdown(results: dict) -> str:
    keys = [
        "val/cls/acc",
        "val/cls/nll",
        *TEST_KEYS,
        "bnmc/cls/acc",
        "bnmc/cls/nll",
        "bnmc/cal/ece",
    ]
    lines = []
    for key in keys:
        if not any(key in r for rows in results.values() for r in rows.values()):
            continue
        lines += [f"**{key}**", "", "| variant | " + " | ".join(f"w={w:g}" for w in WIDTHS) + " |"]
        lines.append("|---|" + "---|" * len(WIDTHS))
        for name, rows in results.items():
            cells = [_fmt(rows.get(w, {}).get(key, [])) for w in WIDTHS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**selection (validation split): mean over widths and seeds, lowest NLL first**",
        "",
        "| variant | val NLL | val accuracy |",
        "|---|---|---|",
    ]
    for nll, acc, name in selection(results):
        lines.append(f"| {name} | {nll:.4f} | {acc:.4f} |")
    lines += [
        "",
        "**training wall time per run (s), median over seeds**",
        "",
        "| variant | s |",
        "|---|---|",
    ]
    for name, rows in results.items():
        times = [t for r in rows.values() for t in r.get("cost/train_s", [])]
        if times:
            lines.append(f"| {name} | {statistics.median(times):.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
