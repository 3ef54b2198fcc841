"""Width recovery (issue 25, items 1 and 2): does a learned ordering find the width a teacher needs?

Synthetic teachers with a known, *needed* width per layer generate 2-class data; a nested student
(the config's ``mlp``, nestified: 2 hidden layers of 64 units in 16 groups of 4, 1 group always kept, so a teacher
layer of ``w`` units is ``w / 4`` groups) is trained on it with the library's ``Trainer``, once per
method (width sampler) and seed. Reported:

* **needed width** (per teacher, mean +- std over seeds): test accuracy / NLL of plain (unmasked,
  point-weight) MLPs trained with the same budget at the teacher's widths, with either layer
  halved, and at twice the width. A layer's width counts as needed when the teacher's width beats
  the halved layer by >= ``--beat`` (accuracy, default 2 points) and twice the width does not beat
  the teacher's width by more than ``--tie`` (default 1 point); a teacher failing this is flagged.
* **recovery** (per teacher, method, seed): final expected groups ``E[groups] = kept + sum_k
  P(b >= k)`` of each ordering unit, the largest per-epoch change over the last 5 epochs of
  ``E[groups]`` and of the mean ``log_alpha`` of every Gaussian layer (item 2: < 0.2 groups and
  < 0.05 per epoch), the net change per epoch over the same epochs (close to the largest change:
  a steady drift, which per-epoch limits alone miss), full-width test accuracy (mean network).
* **learning-rate sensitivity** (item 2, methods that learn the ordering): the same runs with
  ``ordering.lr`` 4x smaller and 4x larger; the largest move of any unit's final ``E[groups]``
  (target <= 1.5 groups).
* **summary**: per method, E[groups] per layer averaged over seeds for every teacher, whether the
  12-group teacher gets >= 3 groups more than the 2-group one in every layer, and the gap between
  the layers of the teacher whose layers differ.

Teacher ``(w1, w2)`` on ``x ~ N(0, I_64)``: ``z = U x`` with ``w1`` orthonormal rows ``U``,
``h = standardise(relu(z - 0.5))`` (independent unit-variance features, each a kink along its own
direction), ``s = V h`` where layer-2 unit ``j`` sums its own block of ``w1 / w2`` layer-1 units,
score ``sum_j a_j relu(s_j) / sqrt(w2)`` with random signs ``a_j``, a little Gaussian noise
(``--noise`` x the score's std), and the label is whether the score is above its median. Every unit
of both layers adds its own kink, so fewer units cannot represent the score exactly and more cannot
improve on it; whether a plain MLP trained with the same budget *shows* this is measured, not
assumed (the needed-width table).

Every student setting comes from a config (:func:`bnn_nested.config.build_config`): the base below,
then the method's ``ordering.sampler``, then ``--set KEY=VALUE`` (all methods) and ``--set
METHOD:KEY=VALUE`` (one method), so new library options run without changing this script.

    .venv/bin/python benchmarks/width_recovery.py                  # 3 seeds: ~5 min CPU, 1 thread
    .venv/bin/python benchmarks/width_recovery.py --set ordering.lr=0.01 --out runs/wr
    .venv/bin/python benchmarks/width_recovery.py --quick          # smoke run (< 20 s)
    .venv/bin/python benchmarks/width_recovery.py --from-json runs/wr/width_recovery.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.evaluation.ordering import max_change_per_epoch
from bnn_nested.models.registry import build_model
from bnn_nested.regularization import build_regularizer
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer, posterior_summary

IN_FEATURES = 64
NUM_CLASSES = 2
HIDDEN = [64, 64]
GROUPS = 16
KEPT = 1
GROUP_SIZE = HIDDEN[0] // GROUPS
#: settings every student starts from (then the method's sampler, then --set)
BASE_OVERRIDES = [
    "model.name=mlp",
    f"model.hidden={HIDDEN}",
    f"model.groups={GROUPS}",
    f"model.kept={KEPT}",
    "model.weight_posterior=gaussian",
    "ordering.hard=true",
    "data.batch_size=128",
    "train.threads=1",
]
LAST = 5  # epochs over which convergence is measured (item 2)


@dataclass(frozen=True)
class TeacherSpec:
    name: str
    widths: tuple[int, int]  # hidden units per layer

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(w // GROUP_SIZE for w in self.widths)


TEACHERS = [
    TeacherSpec("narrow", (8, 8)),  # 2 groups per layer
    TeacherSpec("wide", (48, 48)),  # 12 groups per layer
    TeacherSpec("wide_then_narrow", (48, 8)),  # layers differ
]


# -- teacher --------------------------------------------------------------------------------------
class Teacher:
    """Random teacher of needed widths ``widths`` (see the module docstring); all randomness from
    ``seed``, so the same seed gives the same teacher and the same data."""

    def __init__(
        self,
        widths: Sequence[int],
        seed: int,
        d: int | None = IN_FEATURES,
        noise: float = 0.05,
        bias: float = 0.5,
        classes: int = NUM_CLASSES,
    ):
        w1, w2 = widths
        d = d or w1
        if w1 > d or w2 > w1 or w1 % w2:
            raise ValueError(f"teacher widths {tuple(widths)}: need w2 | w1, w2 <= w1 <= d = {d}")
        self.widths, self.d, self.noise, self.bias = (w1, w2), d, noise, bias
        self.gen = torch.Generator().manual_seed(10_007 * seed + 17)
        self.u = torch.linalg.qr(torch.randn(d, w1, generator=self.gen))[0].T  # (w1, d) orthonormal
        k = w1 // w2  # layer-2 unit j sums the layer-1 units of block j
        self.v = torch.zeros(w2, w1)
        for j in range(w2):
            self.v[j, j * k : (j + 1) * k] = 1 / math.sqrt(k)
        self.a = torch.randint(0, 2, (w2,), generator=self.gen).float() * 2 - 1
        ref = torch.randn(20_000, d, generator=self.gen)
        h = torch.relu(ref @ self.u.T - bias)
        self.mu, self.sd = h.mean(0), h.std(0)
        score = self._score(ref)
        self.score_sd = float(score.std())
        self.thresholds = torch.quantile(score, torch.arange(1, classes) / classes)

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        h = (torch.relu(x @ self.u.T - self.bias) - self.mu) / self.sd
        return torch.relu(h @ self.v.T) @ self.a / math.sqrt(len(self.a))

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` inputs and labels (draws continue the teacher's generator)."""
        x = torch.randn(n, self.d, generator=self.gen)
        score = self._score(x) + self.noise * self.score_sd * torch.randn(n, generator=self.gen)
        return x, torch.bucketize(score, self.thresholds)


def teacher_data(
    widths: Sequence[int],
    seed: int,
    n_train: int,
    n_test: int,
    noise: float = 0.05,
    bias: float = 0.5,
    d: int | None = IN_FEATURES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and test data of the teacher of ``widths`` for ``seed`` (deterministic per seed)."""
    t = Teacher(widths, seed, d=d, noise=noise, bias=bias)
    x, y = t.sample(n_train)
    xt, yt = t.sample(n_test)
    return x, y, xt, yt


def _loader(x, y, batch: int, seed: int | None) -> DataLoader:
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return DataLoader(
        TensorDataset(x, y), batch_size=batch, shuffle=seed is not None, generator=gen
    )


# -- needed width: plain students -----------------------------------------------------------------
def plain_mlp(widths: Sequence[int], d: int = IN_FEATURES, c: int = NUM_CLASSES) -> nn.Module:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    return nn.Sequential(*layers, nn.Linear(d, c))


def train_plain(widths, data, seed: int, epochs: int, lr: float, batch: int) -> dict[str, float]:
    """Test accuracy and NLL of a plain MLP of ``widths`` trained with Adam (the students' budget)."""
    x, y, xt, yt = data
    torch.manual_seed(seed)
    net = plain_mlp(widths, d=x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loader = _loader(x, y, batch, seed)
    for _ in range(epochs):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        logits = net(xt)
    return {
        "acc": float((logits.argmax(-1) == yt).float().mean()),
        "nll": float(F.cross_entropy(logits, yt)),
    }


def plain_variants(widths: Sequence[int]) -> dict[str, tuple[int, int]]:
    w1, w2 = widths
    return {
        "half_l1": (max(1, w1 // 2), w2),
        "half_l2": (w1, max(1, w2 // 2)),
        "teacher": (w1, w2),
        "double": (2 * w1, 2 * w2),
    }


def needed_verdict(acc: dict[str, float], beat: float, tie: float) -> dict[str, Any]:
    """From mean accuracies per variant: is each layer's width needed? (see module docstring)"""
    gain1 = acc["teacher"] - acc["half_l1"]
    gain2 = acc["teacher"] - acc["half_l2"]
    wider = acc["double"] - acc["teacher"]
    out = {
        "gain_over_half_l1": gain1,
        "gain_over_half_l2": gain2,
        "gain_of_double": wider,
        "l1_needed": gain1 >= beat,
        "l2_needed": gain2 >= beat,
        "wider_no_better": wider <= tie,
    }
    out["needed"] = out["l1_needed"] and out["l2_needed"] and out["wider_no_better"]
    return out


# -- nested students ------------------------------------------------------------------------------
def student_overrides(method: str, sets: Sequence[str], seed: int, epochs: int) -> list[str]:
    """Config overrides of one student: base, sampler, seed/epochs, then --set (global first)."""
    out = [*BASE_OVERRIDES, f"ordering.sampler={method}", f"seed={seed}", f"train.epochs={epochs}"]
    glob = [s for s in sets if ":" not in s.split("=", 1)[0]]
    own = [s.split(":", 1)[1] for s in sets if s.split("=", 1)[0].startswith(f"{method}:")]
    return out + glob + own


def ordering_state(model) -> tuple[dict[str, float], dict[str, float]]:
    """(E[groups] per ordering unit, mean log_alpha per Gaussian layer) of ``model`` now."""
    eg = {name: u.expected_groups() for name, u in model.ordering_units()}  # learned or not
    return eg, posterior_summary(model)["mean_log_alpha"]


def last_change(series: list[float], last: int = LAST) -> float:
    """Largest |change per epoch| over the last ``last`` epochs (``series[0]``: before training)."""
    return max_change_per_epoch(series, last)


def net_change(series: list[float], last: int = LAST) -> float:
    """|Net change| over the last ``last`` epochs, per epoch: close to :func:`last_change` when the
    value moves the same way every epoch (a steady drift that per-epoch limits alone can miss)."""
    tail = series[-(last + 1) :]
    return abs(tail[-1] - tail[0]) / max(len(tail) - 1, 1)


def drift(r: dict) -> dict[str, float]:
    """Largest net change per epoch (last ``LAST`` epochs) of E[groups] and mean log_alpha."""
    return {
        "groups": max((net_change(v) for v in r["history_groups"].values()), default=0.0),
        "log_alpha": max((net_change(v) for v in r["history_log_alpha"].values()), default=0.0),
    }


def steady(max_change: float, net: float, floor: float) -> bool:
    """A steady drift: the value moves by >= ``floor`` per epoch, nearly always the same way."""
    return max_change >= floor and net >= 0.8 * max_change


def train_student(overrides: list[str], data, n_test_batch: int = 1000) -> dict[str, Any]:
    cfg = build_config({}, overrides)
    x, y, xt, yt = data
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (x.shape[1],), NUM_CLASSES
    )
    trainer = Trainer(
        model,
        cfg,
        n_train=len(x),
        regularizer=build_regularizer(cfg.regularization),
        quiet=True,
    )
    eg0, la0 = ordering_state(model)
    eg_hist = {k: [v] for k, v in eg0.items()}
    la_hist = {k: [v] for k, v in la0.items()}

    def on_epoch_end(tr, record):
        eg, la = ordering_state(tr.model)
        for k, v in eg.items():
            eg_hist[k].append(v)
        for k, v in la.items():
            la_hist[k].append(v)

    t0 = time.perf_counter()
    trainer.fit(_loader(x, y, cfg.data.batch_size, cfg.seed), on_epoch_end=on_epoch_end)
    secs = time.perf_counter() - t0
    acc = trainer.accuracy(_loader(xt, yt, n_test_batch, None), width=1.0)
    return {
        "expected_groups": {k: v[-1] for k, v in eg_hist.items()},
        "max_change_groups": max((last_change(v) for v in eg_hist.values()), default=0.0),
        "max_change_log_alpha": max((last_change(v) for v in la_hist.values()), default=0.0),
        "change_groups": {k: last_change(v) for k, v in eg_hist.items()},
        "change_log_alpha": {k: last_change(v) for k, v in la_hist.items()},
        "history_groups": eg_hist,
        "history_log_alpha": la_hist,
        "learned": any(u.learn for _, u in model.ordering_units()),
        "ordering_lr": cfg.ordering.lr if cfg.ordering.lr is not None else cfg.train.lr,
        "test_acc": acc,
        "seconds": secs,
        "overrides": overrides,
    }


# -- report ---------------------------------------------------------------------------------------
def _ms(xs: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    m = statistics.fmean(xs) * scale
    if len(xs) < 2:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {statistics.stdev(xs) * scale:.{digits}f}"


def needed_table(res: dict) -> str:
    lines = [
        "| teacher (groups) | variant | widths | test acc % | test NLL |",
        "|---|---|---|---|---|",
    ]
    for t in res["teachers"]:
        block = res["needed"][t["name"]]
        for var, widths in plain_variants(t["widths"]).items():
            runs = block["runs"][var]
            lines.append(
                f"| {t['name']} {tuple(t['groups'])} | {var} | {widths[0]}-{widths[1]} | "
                f"{_ms([r['acc'] for r in runs], 100)} | {_ms([r['nll'] for r in runs], 1, 3)} |"
            )
    lines += [
        "",
        "| teacher | teacher - half L1 (pts) | teacher - half L2 (pts) | double - teacher (pts) | "
        "needed |",
        "|---|---|---|---|---|",
    ]
    for t in res["teachers"]:
        v = res["needed"][t["name"]]["verdict"]
        flag = "yes" if v["needed"] else "**NOT NEEDED**"
        lines.append(
            f"| {t['name']} | {100 * v['gain_over_half_l1']:+.1f} | {100 * v['gain_over_half_l2']:+.1f}"
            f" | {100 * v['gain_of_double']:+.1f} | {flag} |"
        )
    return "\n".join(lines)


def recovery_table(res: dict) -> str:
    lines = [
        "| teacher (groups) | method | seed | E[groups] L1 | E[groups] L2 | max dE/epoch (last 5) "
        "| net dE/epoch (last 5) | max d mean log_alpha/epoch (last 5) | net d log_alpha/epoch "
        "(last 5) | test acc % (full width) | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["students"]:
        eg = list(r["expected_groups"].values())
        d = drift(r)
        lines.append(
            f"| {r['teacher']} {tuple(r['teacher_groups'])} | {r['label']} | {r['seed']} | "
            f"{eg[0]:.2f} | {eg[1]:.2f} | {r['max_change_groups']:.3f} | {d['groups']:.3f} | "
            f"{r['max_change_log_alpha']:.4f} | {d['log_alpha']:.4f} | "
            f"{100 * r['test_acc']:.1f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def summary(res: dict) -> tuple[str, dict]:
    by: dict[tuple[str, str], list[dict]] = {}
    for r in res["students"]:
        by.setdefault((r["label"], r["teacher"]), []).append(r)
    labels = list(dict.fromkeys(r["label"] for r in res["students"]))
    names = [t["name"] for t in res["teachers"]]
    mean_eg: dict[str, dict[str, list[float]]] = {}
    lines = [
        "| method | " + " | ".join(f"{n} L1 | {n} L2" for n in names) + " |",
        "|---|" + "---|---|" * len(names),
    ]
    for lab in labels:
        mean_eg[lab] = {}
        cells = []
        for n in names:
            runs = by.get((lab, n), [])
            per_layer = list(zip(*[list(r["expected_groups"].values()) for r in runs]))
            mean_eg[lab][n] = [statistics.fmean(v) for v in per_layer]
            cells += [_ms(list(v), 1, 2) for v in per_layer]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    checks: dict[str, Any] = {}
    text = []
    groups = {t["name"]: t["groups"] for t in res["teachers"]}
    narrow = [n for n in names if max(groups[n]) == min(groups[n]) and max(groups[n]) <= 4]
    wide = [n for n in names if max(groups[n]) == min(groups[n]) and min(groups[n]) >= 8]
    mixed = [n for n in names if groups[n][0] != groups[n][1]]
    for lab in labels:
        c: dict[str, Any] = {}
        if narrow and wide:
            gap = [w - s for w, s in zip(mean_eg[lab][wide[0]], mean_eg[lab][narrow[0]])]
            c["wide_minus_narrow"] = gap
            c["tracks_width"] = all(g >= 3.0 for g in gap)
        if mixed:
            eg = mean_eg[lab][mixed[0]]
            c["layer_gap_" + mixed[0]] = eg[0] - eg[1]
        runs = [r for r in res["students"] if r["label"] == lab]
        c["max_change_groups"] = max(r["max_change_groups"] for r in runs)
        c["max_change_log_alpha"] = max(r["max_change_log_alpha"] for r in runs)
        c["converged"] = c["max_change_groups"] < 0.2 and c["max_change_log_alpha"] < 0.05
        c["net_change_groups"] = max(drift(r)["groups"] for r in runs)
        c["net_change_log_alpha"] = max(drift(r)["log_alpha"] for r in runs)
        c["steady_drift"] = any(
            steady(r["max_change_groups"], drift(r)["groups"], 0.02)
            or steady(r["max_change_log_alpha"], drift(r)["log_alpha"], 0.005)
            for r in runs
        )
        checks[lab] = c
        parts = []
        if "wide_minus_narrow" in c:
            g = ", ".join(f"{x:+.2f}" for x in c["wide_minus_narrow"])
            parts.append(f"wide - narrow E[groups] per layer {g} (>= 3: {c['tracks_width']})")
        if mixed:
            parts.append(f"{mixed[0]} L1 - L2 {c['layer_gap_' + mixed[0]]:+.2f}")
        parts.append(
            f"last-{LAST}-epoch max change {c['max_change_groups']:.3f} groups, "
            f"{c['max_change_log_alpha']:.4f} log_alpha per epoch (< 0.2 and < 0.05: "
            f"{c['converged']}); net {c['net_change_groups']:.3f} groups, "
            f"{c['net_change_log_alpha']:.4f} log_alpha per epoch (steady drift: "
            f"{c['steady_drift']})"
        )
        text.append(f"- {lab}: " + "; ".join(parts))
    sens = res.get("lr_sensitivity", [])
    if sens:
        text.append("")
        text.append("| teacher | method | seed | ordering.lr x | max move of final E[groups] |")
        text.append("|---|---|---|---|---|")
        for s in sens:
            text.append(
                f"| {s['teacher']} | {s['method']} | {s['seed']} | {s['factor']:g} | "
                f"{s['max_move']:.2f} |"
            )
        worst = max(s["max_move"] for s in sens)
        text.append("")
        text.append(f"- largest move under a 4x smaller / larger ordering.lr: {worst:.2f} groups")
        checks["lr_sensitivity_max_move"] = worst
    return "\n".join(lines) + "\n\n" + "\n".join(text), checks


def render(res: dict) -> str:
    s, _ = summary(res)
    return "\n\n".join(
        [
            f"## Width recovery ({res['settings']})",
            "### Needed width (plain MLPs, same budget, mean ± std over seeds)",
            needed_table(res),
            "### Recovery per run",
            recovery_table(res),
            "### Summary (mean ± std over seeds of final E[groups]; teacher groups in the names)",
            s,
        ]
    )


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--n-train", type=int, default=4000)
    p.add_argument("--n-test", type=int, default=4000)
    p.add_argument("--noise", type=float, default=0.05, help="label noise: x the score's std")
    p.add_argument(
        "--input-dim", type=int, default=IN_FEATURES, help="0: the teacher's layer-1 width"
    )
    p.add_argument("--bias", type=float, default=0.5, help="teacher's layer-1 offset (kink)")
    p.add_argument("--methods", nargs="+", default=["vou", "nested_dropout"])
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[METHOD:]KEY=VALUE",
        help="config override for every student (or only METHOD's); repeatable",
    )
    p.add_argument(
        "--lr-factors",
        nargs="*",
        type=float,
        default=[0.25, 4.0],
        help="also train learned orderings at these multiples of ordering.lr (none: skip)",
    )
    p.add_argument("--teachers", nargs="+", default=[t.name for t in TEACHERS])
    p.add_argument("--plain-lr", type=float, default=1e-3, help="Adam lr of the plain MLPs")
    p.add_argument("--beat", type=float, default=0.02, help="accuracy margin: width needed")
    p.add_argument("--tie", type=float, default=0.01, help="accuracy margin: wider no better")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 seed, 6 epochs, 400 points, one lr factor",
    )
    p.add_argument("--out", default=None, help="folder for width_recovery.json / .md")
    p.add_argument("--from-json", default=None, help="re-print the tables of a saved JSON")
    args = p.parse_args(argv)
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        print(render(res) + f"\n\nTotal time: {res['seconds']:.0f} s")
        return res
    if args.quick:
        args.seeds, args.epochs, args.n_train, args.n_test = 1, 6, 400, 400
        args.lr_factors = [f for f in args.lr_factors if f > 1][:1]
    if args.epochs <= LAST:
        print(f"note: --epochs {args.epochs} <= {LAST}: convergence is measured over all epochs")
    torch.set_num_threads(1)
    teachers = [t for t in TEACHERS if t.name in args.teachers]
    batch = build_config({}, [*BASE_OVERRIDES, *[s for s in args.set if ":" not in s]])
    batch_size = batch.data.batch_size
    t_start = time.perf_counter()
    res: dict[str, Any] = {
        "settings": (
            f"seeds {args.seeds}, epochs {args.epochs}, n_train {args.n_train}, n_test "
            f"{args.n_test}, input dim {args.input_dim}, noise {args.noise}, bias {args.bias}, methods {' '.join(args.methods)}, set "
            f"{' '.join(args.set) or '-'}"
        ),
        "args": vars(args),
        "teachers": [{"name": t.name, "widths": t.widths, "groups": t.groups} for t in teachers],
        "needed": {},
        "students": [],
        "lr_sensitivity": [],
    }
    for t in teachers:
        runs: dict[str, list[dict]] = {v: [] for v in plain_variants(t.widths)}
        for seed in range(args.seeds):
            data = teacher_data(
                t.widths, seed, args.n_train, args.n_test, args.noise, args.bias, args.input_dim
            )
            for var, widths in plain_variants(t.widths).items():
                runs[var].append(
                    train_plain(widths, data, seed, args.epochs, args.plain_lr, batch_size)
                )
        mean_acc = {v: statistics.fmean(r["acc"] for r in rs) for v, rs in runs.items()}
        verdict = needed_verdict(mean_acc, args.beat, args.tie)
        res["needed"][t.name] = {"runs": runs, "verdict": verdict}
        print(f"[needed] {t.name}: {json.dumps(verdict)}", file=sys.stderr)
    for t in teachers:
        for seed in range(args.seeds):
            data = teacher_data(
                t.widths, seed, args.n_train, args.n_test, args.noise, args.bias, args.input_dim
            )
            for method in args.methods:
                over = student_overrides(method, args.set, seed, args.epochs)
                r = train_student(over, data)
                r.update(teacher=t.name, teacher_groups=t.groups, seed=seed, label=method)
                res["students"].append(r)
                eg = ", ".join(f"{v:.2f}" for v in r["expected_groups"].values())
                print(f"[student] {t.name} {method} seed {seed}: E[groups] {eg}", file=sys.stderr)
                if not r["learned"]:
                    continue
                for f in args.lr_factors:
                    rf = train_student([*over, f"ordering.lr={r['ordering_lr'] * f}"], data)
                    move = max(
                        abs(rf["expected_groups"][k] - v) for k, v in r["expected_groups"].items()
                    )
                    res["lr_sensitivity"].append(
                        {
                            "teacher": t.name,
                            "method": method,
                            "seed": seed,
                            "factor": f,
                            "expected_groups": rf["expected_groups"],
                            "max_move": move,
                        }
                    )
    res["seconds"] = time.perf_counter() - t_start
    res["summary"] = summary(res)[1]
    md = render(res) + f"\n\nTotal time: {res['seconds']:.0f} s\n"
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "width_recovery.json").write_text(json.dumps(res, indent=1))
        (out / "width_recovery.md").write_text(md)
    return res


if __name__ == "__main__":
    main()
