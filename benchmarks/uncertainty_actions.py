"""Acting on uncertainty at every width (issue 15): temperature scaling, conformal sets, selective
prediction and the width cascade, on mnist5k LeNet and digits MLP over 3 seeds.

Per data set and seed: train (or reuse) a run with the recipe pinned below (independent of the
shipped configs' defaults), predict the validation and test splits once per width (S MC samples),
then

* temperature per width fitted on validation (NLL of the MC-averaged prediction), stored in the run;
  test ECE / NLL before and after;
* split-conformal ``thr`` sets (and APS, and the nested option) at alpha = 0.05 and 0.1, calibrated
  on validation (temperature-scaled), coverage and mean set size on test;
* AURC (msp = 1 - max p on the calibrated probabilities) per width on test;
* the cascade over widths 0.25 < 0.5 < 0.75 < 1 on calibrated msp: one shared threshold chosen on
  validation to reach the validation accuracy of each fixed width, then test accuracy, ECE, set
  coverage (alpha 0.1) and mean FLOPs per example (every stage visited, x MC samples) against that
  width; the same with uncalibrated scores; and a sweep of thresholds for the accuracy-vs-FLOPs plot.

    .venv/bin/python benchmarks/uncertainty_actions.py --out docs/results/uncertainty_actions.json \\
        --plot-dir docs/results --md /tmp/uncertainty_actions.md     # ~6-10 min on 2 cores
    .venv/bin/python benchmarks/uncertainty_actions.py --quick      # smoke run (1 seed, 1 epoch)
    .venv/bin/python benchmarks/uncertainty_actions.py --from-json docs/results/uncertainty_actions.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bnn_nested.config import build_config
from bnn_nested.cost import count_flops
from bnn_nested.deploy.cascade import cascade_metrics, choose_threshold
from bnn_nested.evaluation.calibration import apply_temperature, fit_temperature, save_temperatures
from bnn_nested.evaluation.conformal import (
    conformal_sets,
    conformal_threshold,
    label_scores,
    nested_conformal_sets,
)
from bnn_nested.evaluation.metrics import classification_report, mean_probs
from bnn_nested.evaluation.prediction import predict_loader
from bnn_nested.evaluation.selective import aurc, selective_score
from bnn_nested.runs import load_run, train_run
from bnn_nested.runs.runfiles import CHECKPOINT

WIDTHS = [0.25, 0.5, 0.75, 1.0]
ALPHAS = [0.05, 0.1]
#: Random calibration / test re-splits of the pooled val + test predictions per run.
RESPLITS = 200
#: Shared cascade thresholds on calibrated msp (1 - confidence) for the accuracy-vs-FLOPs curve.
SWEEP = [1.0, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002]
SWEEP += [0.001, 0.0005, 0.0002, 0.0001, 0.0]

#: The training recipes, pinned here (the shipped configs' defaults may change): the
#: ``configs/mnist5k_lenet.yaml`` and ``configs/digits_mlp.yaml`` recipes after issue 14 (hard
#: straight-through masks with the exact categorical ordering KL; ``weight_kl: keep``).
_ORDERING = {
    "sampler": "vou",
    "temperature": 1.0,
    "schedule": "constant",
    "prior": "geometric",
    "prior_pi": 0.95,
    "init": 3.0,
    "hard": True,
    "weight_kl": "keep",
    "per_example": False,
    "kl_weight": 1.0,
    "kl_warmup_epochs": 0,
}
_REG = {
    "kind": "wrs",
    "granularity": "filter",
    "target": "unit",
    "every": 1,
    "other_weight_decay": 0.0005,
    "classifier_norm": 1.0,
    "classifier_granularity": "per_class",
}
_DATA = {"val_fraction": 0.15, "test_fraction": 0.2, "batch_size": 64, "eval_batch_size": 512}
RECIPES = {
    "mnist5k": {
        "data": {"name": "mnist5k", **_DATA},
        "model": {
            "name": "lenet",
            "hidden": [16, 32, 256],
            "groups": 16,
            "kept": 2,
            "weight_posterior": "gaussian",
            "init_log_alpha": -8.0,
            "norm": "batch",
            "dropout": 0.0,
            "order_first": False,
            "order_classifier_input": True,
        },
        "ordering": _ORDERING,
        "train": {
            "epochs": 8,
            "optimizer": "adam",
            "lr": 0.002,
            "scheduler": "none",
            "device": "cpu",
            "precision": "fp32",
        },
        "eval": {"widths": WIDTHS, "samples": 8, "ece_bins": 15},
        "regularization": _REG,
    },
    "digits": {
        "data": {"name": "digits", **_DATA},
        "model": {
            "name": "mlp",
            "hidden": [256, 256],
            "groups": 16,
            "kept": 1,
            "weight_posterior": "point",
            "norm": "none",
            "dropout": 0.0,
        },
        "ordering": _ORDERING,
        "train": {
            "epochs": 30,
            "optimizer": "adam",
            "lr": 0.001,
            "scheduler": "none",
            "device": "cpu",
            "precision": "fp32",
        },
        "eval": {"widths": WIDTHS, "samples": 1, "ece_bins": 15},
        "regularization": _REG,
    },
}
LABEL = {
    "mnist5k": "mnist5k LeNet (Gaussian weights, 8 MC samples)",
    "digits": "digits MLP (1 sample)",
}


def train_or_reuse(data: str, seed: int, runs: Path, epochs: int | None) -> Path:
    raw = json.loads(json.dumps(RECIPES[data]))
    raw["seed"] = seed
    if epochs is not None:
        raw["train"]["epochs"] = epochs
    out = runs / f"{data}-s{seed}-e{raw['train']['epochs']}"
    if (out / CHECKPOINT).is_file():
        state = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)
        if state.get("complete") and state.get("config", {}).get("seed") == seed:
            return out
    return train_run(build_config(raw), out, quiet=True, overwrite=True)


def one_run(data: str, seed: int, runs: Path, epochs: int | None) -> dict:
    out = train_or_reuse(data, seed, runs, epochs)
    run = load_run(out)
    cfg = run.config
    samples = cfg.eval.samples
    run.recalibrate_bn(WIDTHS)
    bs = cfg.data.eval_batch_size
    val_loader = DataLoader(run.splits.val, batch_size=bs)
    test_loader = DataLoader(run.splits.test, batch_size=bs)
    torch.manual_seed(seed)  # MC samples
    raw_val, raw_test = [], []
    for w in WIDTHS:
        pv, yv = predict_loader(run.model, val_loader, w, samples)
        pt, yt = predict_loader(run.model, test_loader, w, samples)
        raw_val.append(pv)
        raw_test.append(pt)
    fits = {w: fit_temperature(p, yv) for w, p in zip(WIDTHS, raw_val)}
    save_temperatures(out, fits, int(run.checkpoint.get("step", 0)), samples)
    val = [mean_probs(apply_temperature(p, fits[w].temperature)) for w, p in zip(WIDTHS, raw_val)]
    test = [mean_probs(apply_temperature(p, fits[w].temperature)) for w, p in zip(WIDTHS, raw_test)]
    x0 = run.splits.val[0][0].unsqueeze(0)
    flops = [float(count_flops(run.model, x0, w)) for w in WIDTHS]

    res: dict = {"widths": {}, "cascade": {}, "sweep": {}, "samples": samples}
    for i, w in enumerate(WIDTHS):
        before = classification_report(raw_test[i], yt)
        after = classification_report(test[i], yt)
        errors = test[i].argmax(-1) != yt
        row = {
            "T": fits[w].temperature,
            "acc": after["cls/acc"],
            "ece_before": before["cal/ece"],
            "ece_after": after["cal/ece"],
            "nll_before": before["cls/nll"],
            "nll_after": after["cls/nll"],
            "aurc": aurc(errors, selective_score(test[i], "msp")),
            "aurc_raw": aurc(
                mean_probs(raw_test[i]).argmax(-1) != yt, selective_score(raw_test[i], "msp")
            ),
            "flops": flops[i] * samples,
        }
        res["widths"][w] = row
    for a in ALPHAS:
        for name, make, score in (
            ("thr", conformal_sets, "thr"),
            ("aps", conformal_sets, "aps"),
            ("thr_nested", nested_conformal_sets, "thr"),
        ):
            sets = make(val, yv, test, WIDTHS, a, score, seed=seed).metrics(yt)
            for w, m in sets.items():
                res["widths"][w][f"{name}/{a:g}/coverage"] = m["coverage"]
                res["widths"][w][f"{name}/{a:g}/size"] = m["size"]
    val_acc = {w: float((p.argmax(-1) == yv).double().mean()) for w, p in zip(WIDTHS, val)}
    for w in WIDTHS[1:]:
        for kind, pv_, pt_ in (("calibrated", val, test), ("raw", raw_val, raw_test)):
            pv_ = [mean_probs(p)[None] for p in pv_]
            pt_ = [mean_probs(p)[None] for p in pt_]
            qs = [conformal_threshold(label_scores(p, yv, "thr"), 0.1) for p in pv_]
            choice = choose_threshold(pv_, yv, flops, target_accuracy=val_acc[w], samples=samples)
            row = cascade_metrics(
                pt_, yt, choice.thresholds, flops, "msp", samples=samples, set_thresholds=qs
            )
            row.update(threshold=choice.threshold, feasible=choice.feasible, target=val_acc[w])
            res["cascade"][f"{kind}@{w:g}"] = row
    stages = [p[None] for p in test]
    for tau in SWEEP:
        row = cascade_metrics(stages, yt, [tau] * 3, flops, "msp", samples=samples)
        res["sweep"][tau] = {"acc": row["cls/acc"], "flops": row["cost/flops"]}
    # a fine sweep (every test-score quantile) for reading the FLOPs at equal test accuracy
    scores = torch.cat([1 - p.max(-1).values for p in test[:-1]])
    taus = torch.unique(torch.quantile(scores, torch.linspace(0, 1, 513, dtype=torch.float64)))
    res["fine_sweep"] = []
    for tau in [math.inf, *taus.tolist(), -math.inf]:
        row = cascade_metrics(stages, yt, [tau] * 3, flops, "msp", samples=samples)
        res["fine_sweep"].append({"acc": row["cls/acc"], "flops": row["cost/flops"]})
    # expected coverage: 200 random calibration / test re-splits of the pooled val + test data
    pooled = [torch.cat([v, t]) for v, t in zip(val, test)]
    y_all = torch.cat([yv, yt])
    g = torch.Generator().manual_seed(1000 + seed)
    acc_cov: dict[str, list[float]] = {}
    for _ in range(RESPLITS):
        perm = torch.randperm(len(y_all), generator=g)
        cal, te = perm[: len(yv)], perm[len(yv) :]
        for a in ALPHAS:
            for name, make in (("thr", conformal_sets), ("thr_nested", nested_conformal_sets)):
                m = make([p[cal] for p in pooled], y_all[cal], [p[te] for p in pooled], WIDTHS, a)
                for w, r in m.metrics(y_all[te]).items():
                    acc_cov.setdefault(f"{w:g}|{name}/{a:g}", []).append(r["coverage"])
    res["resplit"] = {k: statistics.mean(v) for k, v in acc_cov.items()}
    res["flops_per_width"] = flops
    return res


# --------------------------------------------------------------------------- report


def _ms(vals: list[float], fmt: str = ".4f") -> str:
    n = len(vals)
    vals = [v for v in vals if not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "not reached"
    if len(vals) < n:
        return _ms(vals, fmt) + f" ({n - len(vals)} of {n} not reached)"
    if len(vals) == 1:
        return format(vals[0], fmt)
    return f"{statistics.mean(vals):{fmt}} ± {statistics.stdev(vals):{fmt}}"


def _w(seeds: list[dict], w: float, key: str) -> list[float]:
    """One per-width value of every seed."""
    return [s["widths"][w][key] for s in seeds]


def _c(seeds: list[dict], setting: str, key: str) -> list[float]:
    """One cascade value of every seed."""
    return [s["cascade"][setting][key] for s in seeds]


def markdown(results: dict, command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    for data, seeds in results.items():
        n = len(seeds)
        samples = seeds[0]["samples"]
        lines += [f"#### {LABEL.get(data, data)}, {n} seed(s), mean ± std over seeds", ""]
        lines += [
            "Temperature scaling (fitted on validation, test metrics):",
            "",
            "| width | T | accuracy | ECE before | ECE after | NLL before | NLL after |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in WIDTHS:

            def g(k: str, w: float = w, seeds: list = seeds) -> list[float]:
                return _w(seeds, w, k)

            lines.append(
                f"| {w:g} | {_ms(g('T'), '.3f')} | {_ms(g('acc'))} | {_ms(g('ece_before'))} | "
                f"{_ms(g('ece_after'))} | {_ms(g('nll_before'))} | {_ms(g('nll_after'))} |"
            )
        lines += [
            "",
            "Conformal sets on test (calibrated on validation; coverage / mean set size):",
            "",
            "| width | "
            + " | ".join(f"{s} α={a:g}" for a in ALPHAS for s in ("thr", "aps", "thr nested"))
            + " |",
            "|---|" + "---|" * (3 * len(ALPHAS)),
        ]
        for w in WIDTHS:
            cells = []
            for a in ALPHAS:
                for name in ("thr", "aps", "thr_nested"):
                    cov = _w(seeds, w, f"{name}/{a:g}/coverage")
                    size = _w(seeds, w, f"{name}/{a:g}/size")
                    cells.append(f"{_ms(cov, '.3f')} / {_ms(size, '.2f')}")
            lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
        lines += [
            "",
            f"Expected coverage: mean over {RESPLITS} random calibration / test re-splits of the "
            "pooled validation + test predictions of each run (calibration size = validation size), "
            "then mean ± std over seeds:",
            "",
            "| width | "
            + " | ".join(f"{s} α={a:g}" for a in ALPHAS for s in ("thr", "thr nested"))
            + " |",
            "|---|" + "---|" * (2 * len(ALPHAS)),
        ]
        for w in WIDTHS:
            cells = [
                _ms([sd["resplit"][f"{w:g}|{name}/{a:g}"] for sd in seeds], ".3f")
                for a in ALPHAS
                for name in ("thr", "thr_nested")
            ]
            lines.append(f"| {w:g} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "Selective prediction, AURC on test (msp = 1 - max p; lower is better):",
            "",
            "| width | AURC (calibrated) | AURC (before scaling) |",
            "|---|---|---|",
        ]
        for w in WIDTHS:
            lines.append(
                f"| {w:g} | {_ms(_w(seeds, w, 'aurc'))} | {_ms(_w(seeds, w, 'aurc_raw'))} |"
            )
        lines += [
            "",
            f"Cascade 0.25 → 0.5 → 0.75 → 1 vs fixed widths on test (FLOPs per example x {samples} "
            "MC sample(s), every stage visited counted; threshold chosen on validation to reach the "
            "fixed width's validation accuracy; set coverage at α = 0.1):",
            "",
            "| target | setting | accuracy | ECE | set coverage | set size | mean FLOPs | FLOPs saved vs width |",
            "|---|---|---|---|---|---|---|---|",
        ]
        savings = {}
        for w in WIDTHS[1:]:
            wf = _w(seeds, w, "flops")
            lines.append(
                f"| val acc of width {w:g} | width {w:g} | "
                f"{_ms(_w(seeds, w, 'acc'))} | "
                f"{_ms(_w(seeds, w, 'ece_after'))} | "
                f"{_ms(_w(seeds, w, 'thr/0.1/coverage'), '.3f')} | "
                f"{_ms(_w(seeds, w, 'thr/0.1/size'), '.2f')} | "
                f"{_ms(wf, '.4g')} | — |"
            )
            for kind in ("calibrated", "raw"):
                key = f"{kind}@{w:g}"

                def c(k: str, key: str = key, seeds: list = seeds) -> list[float]:
                    return _c(seeds, key, k)

                saved = [1 - cf / f for cf, f in zip(c("cost/flops"), wf)]
                savings[(w, kind)] = (
                    saved,
                    c("cls/acc"),
                    _w(seeds, w, "acc"),
                )
                met = sum(bool(v) for v in c("feasible"))
                lines.append(
                    f"| | cascade ({kind} scores){'' if met == n else f' (target met on val in {met}/{n})'} | "
                    f"{_ms(c('cls/acc'))} | {_ms(c('cal/ece'))} | {_ms(c('set/coverage'), '.3f')} | "
                    f"{_ms(c('set/size'), '.2f')} | {_ms(c('cost/flops'), '.4g')} | "
                    f"{_ms([100 * v for v in saved], '.1f')} % |"
                )
        lines += [
            "",
            "Equal test accuracy, read off a test threshold sweep (every 1/512 quantile of the "
            "test scores as the shared threshold; the fewest mean FLOPs whose test accuracy is at "
            "least the fixed width's: a reading of the curve, not a threshold chosen without test "
            "labels):",
            "",
            "| width | width accuracy | width FLOPs | cascade FLOPs at >= that accuracy | FLOPs saved |",
            "|---|---|---|---|---|",
        ]
        curve_saved = {}
        for w in WIDTHS[1:]:
            need = []
            for sd in seeds:
                ok = [
                    r["flops"] for r in sd["sweep"].values() if r["acc"] >= sd["widths"][w]["acc"]
                ]
                need.append(min(ok) if ok else math.nan)
            wf = _w(seeds, w, "flops")
            curve_saved[w] = [1 - c / f for c, f in zip(need, wf)]
            lines.append(
                f"| {w:g} | {_ms(_w(seeds, w, 'acc'))} | {_ms(wf, '.4g')} | {_ms(need, '.4g')} | "
                f"{_ms([100 * v for v in curve_saved[w]], '.1f')} % (per seed "
                + ", ".join(f"{100 * v:.1f}" for v in curve_saved[w])
                + ") |"
            )
        saved, acc_c, acc_w = savings[(1.0, "calibrated")]
        lines += [
            "",
            f"**At the full width's validation accuracy as the target, the calibrated cascade used "
            f"{100 * statistics.mean(saved):.1f} % fewer FLOPs per example than width 1 "
            f"(test accuracy {statistics.mean(acc_c):.4f} vs {statistics.mean(acc_w):.4f}, mean of "
            f"{n} seeds; per seed: " + ", ".join(f"{100 * v:.1f} %" for v in saved) + ").**",
            "",
        ]
    return "\n".join(lines)


def plot(results: dict, out_dir: Path) -> list[Path]:
    """Test accuracy vs mean FLOPs (log axis), mean over seeds: fixed widths and the threshold sweep
    as lines, the validation-chosen cascades as markers; one legend."""
    from matplotlib.figure import Figure

    from bnn_nested.evaluation.plots import save_figure

    paths = []
    for data, seeds in results.items():

        def mean(f, seeds=seeds):
            return statistics.mean(f(s) for s in seeds)

        fig = Figure(figsize=(6, 4), layout="constrained")
        ax = fig.add_subplot()
        fx = [mean(lambda s, w=w: s["widths"][w]["flops"]) for w in WIDTHS]
        fy = [mean(lambda s, w=w: s["widths"][w]["acc"]) for w in WIDTHS]
        ax.plot(fx, fy, marker="o", label="fixed widths 0.25 / 0.5 / 0.75 / 1")
        for w, x, y in zip(WIDTHS, fx, fy):
            ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, -11), fontsize=8)
        taus = sorted(seeds[0]["sweep"], reverse=True)
        sx = [mean(lambda s, t=t: s["sweep"][t]["flops"]) for t in taus]
        sy = [mean(lambda s, t=t: s["sweep"][t]["acc"]) for t in taus]
        ax.plot(sx, sy, marker=".", label="cascade, shared threshold sweep (calibrated msp)")
        for kind, marker in (("calibrated", "*"), ("raw", "x")):
            cx = [
                mean(lambda s, k=f"{kind}@{w:g}": s["cascade"][k]["cost/flops"]) for w in WIDTHS[1:]
            ]
            cy = [mean(lambda s, k=f"{kind}@{w:g}": s["cascade"][k]["cls/acc"]) for w in WIDTHS[1:]]
            ax.plot(
                cx,
                cy,
                linestyle="none",
                marker=marker,
                markersize=10,
                label=f"cascade chosen on val ({kind} scores), targets = val acc of 0.5 / 0.75 / 1",
            )
        ax.set_xscale("log")
        ax.set_xlabel(f"mean FLOPs per example (2 x MACs, x {seeds[0]['samples']} MC samples)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{LABEL.get(data, data)}: mean of {len(seeds)} seeds", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        paths.append(save_figure(fig, out_dir / f"uncertainty_{data}_cascade.png"))
    return paths


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist5k,digits")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the pinned epochs")
    p.add_argument("--runs", default="runs/issue15", help="run directories (reused when complete)")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch (smoke run)")
    p.add_argument("--out", default=None, help="write results JSON here")
    p.add_argument("--md", default=None, help="write the markdown tables here")
    p.add_argument("--plot-dir", default=None, help="write the accuracy-vs-FLOPs plots here")
    p.add_argument("--from-json", default=None, help="re-print / re-plot a saved results JSON")
    args = p.parse_args(argv)
    command = "python benchmarks/uncertainty_actions.py " + " ".join(argv or sys.argv[1:])
    if args.quick:
        args.seeds, args.epochs = 1, 1
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text())
        results = saved["results"]
        for seeds in results.values():
            for s in seeds:
                s["widths"] = {float(w): r for w, r in s["widths"].items()}
                s["sweep"] = {float(t): r for t, r in s["sweep"].items()}
        command = saved.get("command", command)
    else:
        results = {}
        t0 = time.time()
        for data in [d for d in args.data.split(",") if d]:
            results[data] = []
            for seed in range(args.seeds):
                results[data].append(one_run(data, seed, Path(args.runs), args.epochs))
                print(f"[{time.time() - t0:6.0f}s] {data} seed {seed} done", file=sys.stderr)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(
                json.dumps({"command": command, "results": results}, indent=1, default=str)
            )
    md = markdown(results, command)
    print(md)
    if args.md:
        Path(args.md).write_text(md)
    if args.plot_dir:
        plot(results, Path(args.plot_dir))
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
