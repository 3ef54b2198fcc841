"""Does the learned ordering follow the data? (issue 25) A teacher whose width need is set by
construction, a nested student wider than it, and the learned expected groups per method.

Teacher ``m``: ``x ~ N(0, I_32)``, label ``argmax_{i < m} |x_i|`` (``m`` classes). A one-hidden-layer
ReLU network needs 2 units per relevant coordinate (``|z| = relu(z) + relu(-z)``), so ``m``
coordinates need ``2 m`` units at least, and more units can only sharpen what SGD finds. Student:
one hidden layer of 64 units in 16 groups of 4 (1 always kept), Gaussian weights, hard masks,
trained ``--epochs`` on ``--n-train`` examples. Reported per teacher, method and seed: final
``E[groups]``, the largest change per epoch over the last 5 epochs of ``E[groups]`` and of the mean
``log_alpha`` (issue 25, item 2), full-width test accuracy, and, for ``coordinate`` orderings, the
measured data term ``N (L(b) - min L)`` at every truncation and the weight-KL cost ``C(b)`` whose
sum ``q`` minimises. Plain students (point weights, Adam, same budget) at ``2m``, ``4m`` units and
64 units show what width the data need from an SGD-trained network.

    .venv/bin/python benchmarks/learned_width.py --out runs/bench/learned_width.json
    .venv/bin/python benchmarks/learned_width.py --quick        # smoke (< 1 min)
"""

from __future__ import annotations

import argparse
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
from bnn_nested.training.coordinate import coordinate_units, group_costs
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
#: name -> overrides (after BASE); the shipped recipe's ordering, and the closed-form updates
METHODS = {
    "nested_dropout": ["ordering.sampler=nested_dropout"],
    "vou (shipped: straight-through, log-uniform)": ["ordering.sampler=vou"],
    "vou coordinate + newton, kl 1": [
        "ordering.sampler=vou",
        "ordering.gradient=coordinate",
        "model.weight_prior=gaussian",
        "train.log_alpha_update=newton",
        "model.init_log_alpha=-4",
    ],
    "vou coordinate + newton, kl 0.1": [
        "ordering.sampler=vou",
        "ordering.gradient=coordinate",
        "model.weight_prior=gaussian",
        "train.log_alpha_update=newton",
        "model.init_log_alpha=-4",
        "ordering.kl_weight=0.1",
    ],
}


def teacher_data(m: int, seed: int, n: int, n_test: int):
    gen = torch.Generator().manual_seed(7919 * seed + m)
    x = torch.randn(n + n_test, D, generator=gen)
    y = x[:, :m].abs().argmax(-1)
    return x[:n], y[:n], x[n:], y[n:]


def plain(units: int, data, seed: int, epochs: int) -> float:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(D, units), nn.ReLU(), nn.Linear(units, int(y.max()) + 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for xb, yb in DataLoader(TensorDataset(x, y), 128, shuffle=True, generator=gen):
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
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
    return out


def _ms(xs: list[float], digits: int = 2) -> str:
    m = statistics.fmean(xs)
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def report(res: dict) -> str:
    a = res["args"]
    lines = [
        f"teachers m = {a['teachers']} (classes = m; units needed >= 2m), seeds {a['seeds']}, "
        f"epochs {a['epochs']}, n_train {a['n_train']}",
        "",
        "Plain students (point weights, Adam), test accuracy %, mean over seeds:",
        "",
        "| teacher m | 2m units | 4m units | 64 units |",
        "|---:|---:|---:|---:|",
    ]
    for m in a["teachers"]:
        p = res["plain"][str(m)]
        lines.append(
            f"| {m} | "
            + " | ".join(_ms([100 * v for v in p[k]], 1) for k in ("2m", "4m", "64"))
            + " |"
        )
    lines += [
        "",
        "| method | teacher m | E[groups] (of 16) | max dE/epoch, last 5 | max d mean log_alpha/epoch, "
        "last 5 | test acc % |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method in res["methods"]:
        for m in a["teachers"]:
            runs = res["runs"][method][str(m)]
            g = [next(iter(r["groups"].values())) for r in runs]
            lines.append(
                f"| {method} | {m} | {_ms(g)} | {max(r['max_change_groups'] for r in runs):.3f} | "
                f"{max(r['max_change_log_alpha'] for r in runs):.3f} | "
                f"{_ms([100 * r['test_acc'] for r in runs], 1)} |"
            )
    curves = [
        (method, m, r)
        for method in res["methods"]
        for m in a["teachers"]
        for r in res["runs"][method][str(m)][:1]
        if "data_term" in r
    ]
    if curves:
        lines += [
            "",
            "Seed 0, coordinate orderings: what q(b) minimises (nats over the data set)",
            "",
        ]
        for method, m, r in curves:
            lines.append(f"- {method}, m = {m}: N (L(b) - min L) = {r['data_term']}")
            lines.append(f"  kl_weight C(b) = {r['kl_cost']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teachers", type=int, nargs="+", default=[4, 24])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-test", type=int, default=4000)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--quick", action="store_true", help="1 seed, 6 epochs, 1000 points")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.epochs, a.n_train, a.n_test = 1, 6, 1000, 500
    torch.set_num_threads(1)
    res: dict = {"args": {**vars(a), "out": str(a.out)}, "methods": a.methods, "plain": {}}
    res["runs"] = {k: {} for k in a.methods}
    t0 = time.perf_counter()
    for m in a.teachers:
        datas = [teacher_data(m, s, a.n_train, a.n_test) for s in range(a.seeds)]
        res["plain"][str(m)] = {
            k: [plain(u, d, s, a.epochs) for s, d in enumerate(datas)]
            for k, u in (("2m", 2 * m), ("4m", 4 * m), ("64", 64))
        }
        for method in a.methods:
            res["runs"][method][str(m)] = [
                student(BASE + METHODS[method] + [f"seed={s}", f"train.epochs={a.epochs}"], d, m)
                for s, d in enumerate(datas)
            ]
            print(f"[done] m={m} {method} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    text = report(res)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
