"""Norm-control benchmark: none vs weight decay vs WRS vs FixNorm vs invariant (issue 4).

A small batch-norm CNN (:class:`NormsCNN`, nested by ``nestify``) is trained on mnist5k with the library's
:class:`~bnn_nested.training.trainer.Trainer` (sampler ``vou``) under each regularizer from
:mod:`bnn_nested.regularization`, with SGD-momentum and with Adam, over several seeds. Reported:

* test accuracy at widths 0.25 / 0.5 / 1.0 (batch-norm statistics re-estimated per width on the
  training split with the library's ``recalibrate_bn``, no masks; the accuracy with the
  training-time running statistics is kept in the JSON as ``acc_raw``), mean +- sample std over
  seeds;
* at width 1.0: the mean per-example input-gradient norm ``||d CE(f(x_i), y_i) / d x_i||_2`` and
  FGSM accuracy at ``eps`` in the *standardised* input space (``x = (pixel/255 - m) / s``, i.e.
  ``eps * s`` in [0, 1] pixel units), adversarial inputs clamped to the valid pixel range;
* per-step overhead: median time of one training step relative to ``none``, measured by an
  interleaved micro-benchmark on one fixed batch (robust to the shared CPU's load drifting).

Usage::

    .venv/bin/python benchmarks/norms.py                 # 2 optimizers x 3 seeds x 7 methods
    .venv/bin/python benchmarks/norms.py --quick         # 1 seed, 1 epoch, small subset
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from bnn_nested.config import Config, build_config
from bnn_nested.data.mnist5k import load_mnist5k
from bnn_nested.evaluation.report import evaluate_widths
from bnn_nested.nest import NestifiedModel, nestify
from bnn_nested.nn.batchnorm import UncalibratedWidthWarning, recalibrate_bn
from bnn_nested.regularization import build_regularizer
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer

OptimizerName = Literal["sgd", "adam"]

#: Learning rates: SGD momentum 0.9 (0.02 beat 0.05 and 0.1 in a 1-seed probe of `none`/`wrs`)
#: and Adam's usual default; cosine schedule for both.
LEARNING_RATES: dict[str, float] = {"sgd": 0.02, "adam": 1e-3}
#: Coupled weight-decay coefficients (span 10x).
WD_COEFFICIENTS: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
#: Invariant-regularizer coefficient. Its gradient on a balanced chain is ``2 c W``, the same as
#: coupled weight decay ``2 c`` (here 1e-3, the largest WD coefficient).
INVARIANT_COEFFICIENT = 5e-4

#: Method name -> ``regularization`` section of the config.
METHODS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    **{
        f"wd {wd:g}": {"kind": "weight_decay", "weight_decay": wd, "mode": "coupled"}
        for wd in WD_COEFFICIENTS
    },
    "wrs": {"kind": "wrs"},
    "fixnorm": {"kind": "fixnorm"},
    "invariant": {"kind": "invariant", "coefficient": INVARIANT_COEFFICIENT},
}
WIDTHS: tuple[float, ...] = (0.25, 0.5, 1.0)
FGSM_EPS = 0.1


class NormsCNN(nn.Module):
    """Two 3x3 conv blocks and a linear classifier, for 1x28x28 inputs (nested by :func:`build_model`).

    ``conv(1->c1) -> BN -> ReLU -> maxpool2 -> conv(c1->c2) -> BN -> ReLU -> maxpool2 -> flatten ->
    Linear(c2*7*7 -> classes)``. Convolutions have no bias (BN follows). Nestified, each conv's
    output channels are one dimension: at width ``r`` it keeps ``F + ceil(r K)`` of its ``G``
    channel groups, and the classifier reads the matching ``c * 49`` flattened features.

    Args:
        channels: ``(c1, c2)``; ``groups`` must divide both.
    """

    def __init__(self, channels: tuple[int, int] = (32, 64), num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.classifier = nn.Linear(c2 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        return self.classifier(h.flatten(1))


def make_config(
    method: str, optimizer: OptimizerName, seed: int, epochs: int, batch_size: int
) -> Config:
    """The validated run config of one (method, optimizer, seed) cell."""
    if method not in METHODS:
        raise ValueError(f"method: got {method!r}; accepted {', '.join(map(repr, METHODS))}")
    if optimizer not in get_args(OptimizerName):
        raise ValueError(f"optimizer: got {optimizer!r}; accepted 'sgd', 'adam'")
    return build_config(
        {
            "seed": seed,
            "data": {"name": "mnist5k", "batch_size": batch_size},
            "model": {"name": "norms_cnn", "groups": 8, "kept": 1, "norm": "batch"},
            "ordering": {"sampler": "vou"},
            "train": {
                "epochs": epochs,
                "optimizer": optimizer,
                "lr": LEARNING_RATES[optimizer],
                "momentum": 0.9,
                "scheduler": "cosine",
            },
            "regularization": METHODS[method],
        }
    )


def build_model(cfg: Config) -> NestifiedModel:
    """:class:`NormsCNN` nested by ``nestify`` (dimensions ``conv1`` and ``conv2``)."""
    ordering = build_sampler(cfg.ordering).ordering_kwargs()
    example = torch.zeros(2, 1, 28, 28)
    m = cfg.model
    net = NormsCNN().eval()  # converted in eval (BN running statistics), then trained
    return nestify(net, example, groups=m.groups, kept=m.kept, ordering=ordering).train()


# -- evaluation ---------------------------------------------------------------------------------
def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``d CE(f(x_i), y_i) / d x_i`` (eval mode, so examples are independent)."""
    model.eval()
    x = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def robustness(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    lo: float,
    hi: float,
    batch: int = 500,
) -> dict[str, float]:
    """Mean input-gradient L2 norm and FGSM accuracy ``acc(f(clip(x + eps sign(g), lo, hi)))``."""
    norms, correct = [], 0
    for xb, yb in zip(x.split(batch), y.split(batch)):
        g = input_gradients(model, xb, yb)
        norms.append(g.flatten(1).norm(dim=1))
        x_adv = (xb + eps * g.sign()).clamp(lo, hi)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(-1) == yb).sum())
    return {"grad_norm": float(torch.cat(norms).mean()), "fgsm_acc": correct / len(y)}


def tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), torch.stack(ys)


# -- one run ------------------------------------------------------------------------------------
def run_one(
    method: str,
    optimizer: OptimizerName,
    seed: int,
    data: dict[str, Any],
    epochs: int,
    batch_size: int,
) -> dict[str, Any]:
    """Train one cell and evaluate it; returns accuracies, robustness and timing."""
    cfg = make_config(method, optimizer, seed, epochs, batch_size)
    torch.manual_seed(seed)
    model = build_model(cfg)
    reg = build_regularizer(cfg.regularization)
    trainer = Trainer(model, cfg, n_train=len(data["train"]), regularizer=reg, quiet=True)
    loader = DataLoader(
        data["train"],
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )
    step_times: list[float] = []
    inner = trainer.train_step

    def timed_step(x, y):
        t0 = time.perf_counter()
        out = inner(x, y)
        step_times.append(time.perf_counter() - t0)
        return out

    trainer.train_step = timed_step  # type: ignore[method-assign]
    t0 = time.perf_counter()
    history = trainer.fit(loader)
    train_s = time.perf_counter() - t0

    x_tr, x_te, y_te = data["x_train"], data["x_test"], data["y_test"]
    model.eval()
    acc, acc_raw = {}, {}
    with warnings.catch_warnings():
        # "raw" on purpose uses the training-time running statistics at every width
        warnings.filterwarnings("ignore", category=UncalibratedWidthWarning)
        raw = evaluate_widths(model, data["test"], list(WIDTHS))
    # then the library's per-width BN calibration on the training split (exact cumulative mean and
    # unbiased variance over all its batches, masks off)
    recalibrate_bn(model, x_tr.split(256), list(WIDTHS))
    calibrated = evaluate_widths(model, data["test"], list(WIDTHS))
    for w in WIDTHS:
        acc[w] = calibrated.rows[w]["cls/acc"]
        acc_raw[w] = raw.rows[w]["cls/acc"]
    with model.width(1.0):
        rob = robustness(model, x_te, y_te, FGSM_EPS, data["lo"], data["hi"])
    return {
        "method": method,
        "optimizer": optimizer,
        "seed": seed,
        "acc": acc,
        "acc_raw": acc_raw,
        **rob,
        "median_step_s": statistics.median(step_times),
        "train_s": train_s,
        "final_loss": history[-1]["loss"],
        "conv_filter_norm": {
            n: float(getattr(model.net, n).weight.detach().flatten(1).norm(dim=1).mean())
            for n in ("conv1", "conv2")
        },
        "classifier_norm": float(model.net.classifier.weight.detach().norm()),
        "targets": list(getattr(reg, "targets", [])),
    }


def step_overhead(
    methods: Sequence[str],
    optimizer: OptimizerName,
    x: torch.Tensor,
    y: torch.Tensor,
    n_train: int,
    steps: int,
    rounds: int,
) -> dict[str, float]:
    """Median step time per method (seconds) from ``rounds`` interleaved rounds of ``steps``."""
    trainers = {}
    for m in methods:
        cfg = make_config(m, optimizer, 0, 1, len(x))
        torch.manual_seed(0)
        trainers[m] = Trainer(
            build_model(cfg),
            cfg,
            n_train=n_train,
            regularizer=build_regularizer(cfg.regularization),
            quiet=True,
        )
        trainers[m].regularizer.setup(trainers[m].model, example_input=x[:2])
        trainers[m].train_step(x, y)  # warm-up
    times: dict[str, list[float]] = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            for _ in range(steps):
                t0 = time.perf_counter()
                trainers[m].train_step(x, y)
                times[m].append(time.perf_counter() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


# -- report -------------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mu = statistics.fmean(values)
    return mu, (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    mu, sd = mean_std([v * scale for v in values])
    return f"{mu:.{digits}f} ± {sd:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    """Markdown tables of a results dict produced by :func:`main`."""
    runs = results["runs"]
    methods, optimizers = results["methods"], results["optimizers"]
    lines: list[str] = []

    def cell(m: str, o: str) -> list[dict]:
        return [r for r in runs if r["method"] == m and r["optimizer"] == o]

    lines.append(
        "Test accuracy (%) by width, BN statistics re-estimated per width; mean ± std "
        f"over {len(results['seeds'])} seed(s).\n"
    )
    head = "| method | " + " | ".join(f"{o} r={w:g}" for o in optimizers for w in WIDTHS) + " |"
    lines += [head, "|" + "---|" * (1 + len(optimizers) * len(WIDTHS))]
    for m in methods:
        row = [fmt([r["acc"][w] for r in cell(m, o)]) for o in optimizers for w in WIDTHS]
        lines.append(f"| {m} | " + " | ".join(row) + " |")

    eps_pix = FGSM_EPS * results["data_std"]
    lines.append(
        f"\nRobustness at width 1.0: mean input-gradient norm ||dCE/dx||_2 (standardised input) "
        f"and FGSM accuracy (%) at eps = {FGSM_EPS:g} in standardised units "
        f"(= {eps_pix:.4f} in [0,1] pixel units = {255 * eps_pix:.2f}/255).\n"
    )
    head = "| method | " + " | ".join(f"{o} grad norm | {o} FGSM acc" for o in optimizers) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(optimizers))]
    for m in methods:
        row = []
        for o in optimizers:
            rs = cell(m, o)
            row += [fmt([r["grad_norm"] for r in rs], 1.0, 3), fmt([r["fgsm_acc"] for r in rs])]
        lines.append(f"| {m} | " + " | ".join(row) + " |")

    lines.append(
        "\nPer-step overhead: median step time relative to `none` (interleaved "
        "micro-benchmark; in parentheses: median step in the training runs, relative).\n"
    )
    head = "| method | " + " | ".join(f"{o} step (ms) | {o} relative" for o in optimizers) + " |"
    lines += [head, "|" + "---|" * (1 + 2 * len(optimizers))]
    for m in methods:
        row = []
        for o in optimizers:
            t = results["overhead"][o]
            base_train = statistics.median(r["median_step_s"] for r in cell("none", o))
            train_rel = statistics.median(r["median_step_s"] for r in cell(m, o)) / base_train
            row += [f"{1000 * t[m]:.1f}", f"{t[m] / t['none']:.3f} ({train_rel:.3f})"]
        lines.append(f"| {m} | " + " | ".join(row) + " |")

    lines.append(
        "\nTest accuracy (%) with the training-time BN running statistics (no re-estimation).\n"
    )
    head = "| method | " + " | ".join(f"{o} r={w:g}" for o in optimizers for w in WIDTHS) + " |"
    lines += [head, "|" + "---|" * (1 + len(optimizers) * len(WIDTHS))]
    for m in methods:
        row = [fmt([r["acc_raw"][w] for r in cell(m, o)]) for o in optimizers for w in WIDTHS]
        lines.append(f"| {m} | " + " | ".join(row) + " |")

    lines.append(
        "\nMean filter norm of conv1 / conv2 and classifier Frobenius norm after "
        "training (first seed).\n"
    )
    head = "| method | " + " | ".join(f"{o} conv1 / conv2 / clf" for o in optimizers) + " |"
    lines += [head, "|" + "---|" * (1 + len(optimizers))]
    for m in methods:
        row = []
        for o in optimizers:
            r = cell(m, o)[0]
            n = r["conv_filter_norm"]
            row.append(f"{n['conv1']:.2f} / {n['conv2']:.2f} / {r['classifier_norm']:.2f}")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- entry point --------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, 1024 training examples")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 5)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--subset", type=int, default=None, help="use N random training examples")
    p.add_argument("--test-subset", type=int, default=None, help="use N random test examples")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="subset of methods")
    p.add_argument("--optimizers", nargs="+", default=["sgd", "adam"], help="sgd and/or adam")
    p.add_argument("--timing-steps", type=int, default=None, help="steps per timing round")
    p.add_argument("--timing-rounds", type=int, default=None, help="interleaved timing rounds")
    p.add_argument("--json", type=Path, default=None, help="write all results to this file")
    p.add_argument("--markdown", type=Path, default=None, help="write the tables to this file")
    args = p.parse_args(argv)
    quick = args.quick
    args.epochs = args.epochs if args.epochs is not None else (1 if quick else 5)
    args.seeds = args.seeds if args.seeds is not None else (1 if quick else 3)
    args.subset = args.subset if args.subset is not None else (1024 if quick else None)
    args.timing_steps = args.timing_steps or (2 if quick else 5)
    args.timing_rounds = args.timing_rounds or (2 if quick else 4)
    for name, v in (("epochs", args.epochs), ("seeds", args.seeds)):
        if v < 1:
            p.error(f"--{name}: must be >= 1, got {v}")
    bad = [m for m in args.methods if m not in METHODS]
    if bad or "none" not in args.methods:
        p.error(f"--methods: need 'none' and names from {list(METHODS)}; got {args.methods}")
    bad = [o for o in args.optimizers if o not in get_args(OptimizerName)]
    if bad:
        p.error(f"--optimizers: accepted 'sgd', 'adam'; got {bad}")
    return args


def load_data(subset: int | None, test_subset: int | None) -> dict[str, Any]:
    """mnist5k (fixed split seed 0) as datasets and tensors, plus the valid standardised range."""
    splits = load_mnist5k(seed=0)
    train, test = splits.train, splits.test
    # mnist5k is sorted by class: subsets are a fixed random permutation's first N examples
    perm = torch.Generator().manual_seed(0)
    if subset is not None:
        train = Subset(train, torch.randperm(len(train), generator=perm)[:subset].tolist())
    if test_subset is not None:
        test = Subset(test, torch.randperm(len(test), generator=perm)[:test_subset].tolist())
    x_train, y_train = tensors(train)
    x_test, y_test = tensors(test)
    mean, std = splits.mean[0], splits.std[0]
    return {
        "train": TensorDataset(x_train, y_train),
        "test": TensorDataset(x_test, y_test),
        "x_train": x_train,
        "x_test": x_test,
        "y_test": y_test,
        "lo": (0.0 - mean) / std,
        "hi": (1.0 - mean) / std,
        "mean": mean,
        "std": std,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; prints progress and the markdown tables, returns the results dict."""
    args = parse_args(argv)
    data = load_data(args.subset, args.test_subset)
    t_start = time.perf_counter()
    runs = []
    for opt in args.optimizers:
        for seed in range(args.seeds):
            for m in args.methods:
                r = run_one(m, opt, seed, data, args.epochs, args.batch_size)
                runs.append(r)
                print(
                    f"[{time.perf_counter() - t_start:6.0f}s] {opt:4s} seed {seed} {m:10s} "
                    + " ".join(f"r={w:g}:{r['acc'][w]:.3f}" for w in WIDTHS)
                    + f" grad {r['grad_norm']:.3f} fgsm {r['fgsm_acc']:.3f}"
                    + f" step {1000 * r['median_step_s']:.0f}ms",
                    file=sys.stderr,
                    flush=True,
                )
    x = data["x_train"][: args.batch_size]
    y = data["train"].tensors[1][: args.batch_size]
    overhead = {
        o: step_overhead(
            args.methods, o, x, y, len(data["train"]), args.timing_steps, args.timing_rounds
        )
        for o in args.optimizers
    }
    results = {
        "command": "benchmarks/norms.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "epochs": args.epochs,
        "seeds": list(range(args.seeds)),
        "batch_size": args.batch_size,
        "n_train": len(data["train"]),
        "n_test": len(data["test"]),
        "methods": list(args.methods),
        "optimizers": list(args.optimizers),
        "learning_rates": {o: LEARNING_RATES[o] for o in args.optimizers},
        "data_std": data["std"],
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t_start,
        "overhead": overhead,
        "runs": [{**r, "acc": _keyed(r["acc"]), "acc_raw": _keyed(r["acc_raw"])} for r in runs],
    }
    # keep float width keys for markdown(), string keys for JSON
    table = markdown({**results, "runs": runs})
    results["markdown"] = table
    print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table + "\n")
    return results


def _keyed(d: dict[float, float]) -> dict[str, float]:
    return {f"{k:g}": v for k, v in d.items()}


if __name__ == "__main__":
    main()
