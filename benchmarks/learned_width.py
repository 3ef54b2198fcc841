"""Does the learned ordering follow the data? (issue 25) Teachers whose width need is set by
construction (``TEACHERS``), nested students wider than them, and the learned expected groups per
method.

Students: hidden layers of 64 units in 16 groups of 4 (1 always kept), Gaussian weights, hard
masks, cosine learning rate, trained ``--epochs`` on ``--n-train`` examples. Reported per teacher,
method and seed: final ``E[groups]`` of every layer, the largest change per epoch over the last 5
epochs of ``E[groups]`` and of the mean ``log_alpha`` (issue 25, item 2), full-width test accuracy,
and, for ``coordinate`` orderings, the measured data term ``N (L(b) - min L)`` at every truncation
and the weight-KL cost ``C(b)`` whose sum ``q`` minimises. Plain students (point weights, Adam, same
budget) at several widths show what the data need from an SGD-trained network; ``--step-sizes``
retrains the learned recipe with each variational step size 4x smaller and larger (item 2).

    .venv/bin/python benchmarks/learned_width.py --step-sizes --out runs/bench/learned_width.json
    .venv/bin/python benchmarks/learned_width.py --quick        # smoke (< 1 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.evaluation.ordering import max_change_per_epoch
from bnn_nested.models.registry import build_model
from bnn_nested.nn.nested import LOG_ALPHA_MIN
from bnn_nested.training.coordinate import coordinate_units, group_costs, loss_curves
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer, posterior_summary

D = 32
HIDDEN = 64
GROUPS = 16
LAST = 5
BASE = [
    "model.name=mlp",
    f"model.hidden=[{HIDDEN}]",
    f"model.groups={GROUPS}",
    "model.kept=1",
    "model.weight_posterior=gaussian",
    "ordering.hard=true",
    "data.batch_size=128",
    "train.threads=1",
]
#: the closed-form updates with the schedule that lets them converge: cosine learning rate (the
#: variances' damping decays with it), a 10-epoch KL warm-up (without it q(b) takes the cheapest
#: width after the first epoch, before the network has learned anything, and a wide teacher or a
#: two-layer student stays there), the untempered objective (kl weight 1)
LEARNED = [
    "ordering.sampler=vou",
    "ordering.gradient=coordinate",
    "model.weight_prior=gaussian",
    "train.log_alpha_update=newton",
    "train.newton_rate=0.025",
    "model.init_log_alpha=-4",
    "train.scheduler=cosine",
    "ordering.kl_warmup_epochs=10",
]
#: name -> overrides (after BASE); every method gets the same cosine schedule
METHODS = {
    "nested_dropout": ["ordering.sampler=nested_dropout", "train.scheduler=cosine"],
    "vou (shipped: straight-through, log-uniform)": [
        "ordering.sampler=vou",
        "train.scheduler=cosine",
    ],
    "vou coordinate + newton": LEARNED,
}
#: item 2: the final E[groups] of the learned recipe with each step size of the variational
#: parameters 4x smaller and larger (seed 0)
STEP_SIZES = {
    "newton_rate x1/4": ["train.newton_rate=0.00625"],
    "newton_rate x4": ["train.newton_rate=0.1"],
    "lr of the means x1/4": ["train.lr=0.00025"],
    "lr of the means x4": ["train.lr=0.004"],
    "ordering.lr x1/4": ["ordering.lr=0.00025"],
    "ordering.lr x4": ["ordering.lr=0.004"],
}


#: teacher -> (m relevant coordinates, c classes, student's hidden layers, plain students' hidden
#: layers). One layer: label ``argmax_{i < m} |x_i|``, which needs 2m ReLU units (``|z| = relu(z)
#: + relu(-z)``): 1-2 groups of 4 for m = 2, 6-12 for m = 12. Two layers: ``m`` coordinates in
#: ``c`` blocks, label the block with the largest ``sum |x_i|``: the first layer needs 2m units, the
#: second only c (the block sums are linear in the first layer's units).
TEACHERS = {
    "m=2": (2, 2, [HIDDEN], {"2m": [4], "4m": [8], "64": [64]}),
    "m=12": (12, 12, [HIDDEN], {"2m": [24], "4m": [48], "64": [64]}),
    "two-layer m=12, c=3": (
        12,
        3,
        [HIDDEN, HIDDEN],
        {"4m, c": [48, 3], "m, 64": [12, 64], "4m, 64": [48, 64], "64, 64": [64, 64]},
    ),
}


def teacher_data(m: int, c: int, seed: int, n: int, n_test: int):
    gen = torch.Generator().manual_seed(7919 * seed + m + 101 * c)
    x = torch.randn(n + n_test, D, generator=gen)
    y = x[:, :m].abs().reshape(-1, c, m // c).sum(-1).argmax(-1)
    return x[:n], y[:n], x[n:], y[n:]


def plain(hidden: list[int], data, seed: int, epochs: int) -> float:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = D
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    net = nn.Sequential(*layers, nn.Linear(width, int(y.max()) + 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for xb, yb in DataLoader(TensorDataset(x, y), 128, shuffle=True, generator=gen):
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
        sched.step()
    with torch.no_grad():
        return float((net(xt).argmax(-1) == yt).float().mean())


def student(overrides: list[str], data, classes: int) -> dict:
    cfg = build_config({}, overrides)
    x, y, xt, yt = data
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (D,), classes)
    trainer = Trainer(model, cfg, n_train=len(x), quiet=True)
    groups = {name: [u.expected_groups()] for name, u in model.ordering_units()}
    alpha = {k: [v] for k, v in posterior_summary(model)["mean_log_alpha"].items()}

    def on_epoch_end(tr, record):
        for name, u in tr.model.ordering_units():
            groups[name].append(u.expected_groups())
        for k, v in posterior_summary(tr.model)["mean_log_alpha"].items():
            alpha[k].append(v)

    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    trainer.fit(
        DataLoader(TensorDataset(x, y), cfg.data.batch_size, shuffle=True, generator=gen),
        on_epoch_end=on_epoch_end,
    )
    out = {
        "groups": {k: v[-1] for k, v in groups.items()},
        "max_change_groups": max(max_change_per_epoch(v, LAST) for v in groups.values()),
        "max_change_log_alpha": max(max_change_per_epoch(v, LAST) for v in alpha.values()),
        "history_groups": groups,
        "history_log_alpha": alpha,
        "test_acc": trainer.accuracy(DataLoader(TensorDataset(xt, yt), 1000), width=1.0),
        "seconds": time.perf_counter() - t0,
    }
    units = coordinate_units(model)
    if units:
        costs = group_costs(model, units)
        curve = units[0].loss_curve
        out["data_term"] = [round(float(v), 1) for v in len(x) * (curve - curve.min())]
        cost = torch.cat([costs[0].new_zeros(1), costs[0].cumsum(0)])
        out["kl_cost"] = [round(float(v), 1) for v in cost * cfg.ordering.kl_weight]
        out["test_curves"] = test_curves(model, (xt, yt), len(x))
    return out


def test_curves(model: nn.Module, test, n_train: int) -> dict:
    """Every coordinate unit's data term ``N (L(b) - min L)`` on the test set, with the trained
    weight noise and at the posterior means (``log_alpha`` at its floor): whether wider truncations
    lower the loss only because more units average the noise out."""
    batches = [test]
    loss_curves(model, batches, seed=0)
    noisy = [n_train * (u.loss_curve - u.loss_curve.min()) for u in coordinate_units(model)]
    quiet = copy.deepcopy(model)
    with torch.no_grad():
        for m in quiet.modules():
            if getattr(m, "log_alpha", None) is not None:
                m.log_alpha.fill_(LOG_ALPHA_MIN)
    loss_curves(quiet, batches, seed=0)
    means = [n_train * (u.loss_curve - u.loss_curve.min()) for u in coordinate_units(quiet)]
    names = [name for name, u in model.ordering_units() if u.gradient == "coordinate"]
    return {
        name: {"noisy": [round(float(v)) for v in a], "means": [round(float(v)) for v in b]}
        for name, a, b in zip(names, noisy, means)
    }


def _ms(xs: list[float], digits: int = 2) -> str:
    m = statistics.fmean(xs)
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def report(res: dict) -> str:
    a = res["args"]
    lines = [
        f"teachers {a['teachers']}, seeds {a['seeds']}, epochs {a['epochs']}, "
        f"n_train {a['n_train']}",
        "",
        "Plain students (point weights, Adam, cosine), test accuracy %, mean over seeds:",
        "",
    ]
    for t in a["teachers"]:
        p = res["plain"][t]
        lines.append(f"- {t}: " + ", ".join(f"[{k}] {_ms([100 * v for v in p[k]], 1)}" for k in p))
    lines += [
        "",
        "| method | teacher | E[groups] per layer (of 16) | max dE/epoch, last 5 | max d mean "
        "log_alpha/epoch, last 5 | test acc % |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for method in res["methods"]:
        for t in a["teachers"]:
            runs = res["runs"][method][t]
            layers = list(runs[0]["groups"])
            g = " / ".join(_ms([r["groups"][k] for r in runs]) for k in layers)
            lines.append(
                f"| {method} | {t} | {g} | {max(r['max_change_groups'] for r in runs):.3f} | "
                f"{max(r['max_change_log_alpha'] for r in runs):.3f} | "
                f"{_ms([100 * r['test_acc'] for r in runs], 1)} |"
            )
    if res.get("warmups"):
        lines += [
            "",
            f"KL warm-up length (epochs of {a['epochs']}), seed 0, final E[groups] per layer of the recipe:",
            "",
            "| teacher | " + " | ".join(f"{w} epochs" for w in a["warmups"]) + " |",
            "|---|" + "---:|" * len(a["warmups"]),
        ]
        for t, row in res["warmups"].items():
            cells = [" / ".join(f"{v:.2f}" for v in row[str(w)].values()) for w in a["warmups"]]
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if res.get("step_sizes"):
        lines += [
            "",
            "Step sizes of the variational parameters, seed 0, final E[groups] per layer:",
            "",
            "| teacher | recipe | " + " | ".join(STEP_SIZES) + " |",
            "|---|---:|" + "---:|" * len(STEP_SIZES),
        ]
        for t, row in res["step_sizes"].items():
            base = res["runs"]["vou coordinate + newton"][t][0]["groups"]
            cells = [" / ".join(f"{v:.2f}" for v in row[k].values()) for k in STEP_SIZES]
            lines.append(
                f"| {t} | {' / '.join(f'{v:.2f}' for v in base.values())} | "
                + " | ".join(cells)
                + " |"
            )
    curves = [
        (method, t, r)
        for method in res["methods"]
        for t in a["teachers"]
        for r in res["runs"][method][t][:1]
        if "data_term" in r
    ]
    if curves:
        lines += [
            "",
            "Seed 0, coordinate orderings, first ordered layer: what q(b) minimises (nats over the "
            "data set)",
            "",
        ]
        for method, t, r in curves:
            lines.append(f"- {method}, {t}: N (L(b) - min L) = {r['data_term']}")
            lines.append(f"  kl_weight C(b) = {r['kl_cost']}")
            for unit, c in r.get("test_curves", {}).items():
                lines.append(f"  {unit}, test set, trained noise: {c['noisy']}")
                lines.append(f"  {unit}, test set, posterior means: {c['means']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=16000)
    p.add_argument("--n-test", type=int, default=4000)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--step-sizes", action="store_true", help="item 2: 4x smaller / larger steps")
    p.add_argument(
        "--warmups",
        type=lambda t: [int(v) for v in t.split(",")],
        default=[],
        help="also retrain the recipe (seed 0) with these KL warm-up lengths, e.g. 5,10,15: "
        "does the final width depend on where the warm-up left the network?",
    )
    p.add_argument("--quick", action="store_true", help="1 seed, 6 epochs, 1000 points")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.n_train, a.n_test = 1, 6, 1000, 500
    torch.set_num_threads(1)
    res: dict = {"args": {**vars(a), "out": str(a.out)}, "methods": a.methods, "plain": {}}
    res["runs"] = {k: {} for k in a.methods}
    res["step_sizes"] = {}
    res["warmups"] = {}
    t0 = time.perf_counter()
    for t in a.teachers:
        m, c, hidden, plains = TEACHERS[t]
        datas = [teacher_data(m, c, s, a.n_train, a.n_test) for s in range(a.seeds)]
        res["plain"][t] = {
            k: [plain(h, d, s, a.epochs) for s, d in enumerate(datas)] for k, h in plains.items()
        }
        base = BASE + [f"model.hidden={hidden}", f"train.epochs={a.epochs}"]
        for method in a.methods:
            res["runs"][method][t] = [
                student(base + METHODS[method] + [f"seed={s}"], d, c) for s, d in enumerate(datas)
            ]
            print(f"[done] {t} {method} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if a.warmups:
            no_warmup = [o for o in LEARNED if not o.startswith("ordering.kl_warmup_epochs")]
            res["warmups"][t] = {
                str(w): student(
                    base + no_warmup + [f"ordering.kl_warmup_epochs={w}", "seed=0"], datas[0], c
                )["groups"]
                for w in a.warmups
            }
            print(f"[done] {t} warm-ups ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if a.step_sizes and "vou coordinate + newton" in a.methods:
            res["step_sizes"][t] = {
                k: student(base + LEARNED + v + ["seed=0"], datas[0], c)["groups"]
                for k, v in STEP_SIZES.items()
            }
            print(f"[done] {t} step sizes ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    text = report(res)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
