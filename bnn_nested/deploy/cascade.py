"""Anytime inference: run the narrowest width, escalate uncertain examples to wider widths.

Stage ``i`` runs width ``widths[i]`` (increasing). An example leaves at stage ``i`` when its
uncertainty score (``"msp"`` = ``1 - max_c p̄_c``, ``"entropy"`` = predictive entropy ``H[p̄]``,
``"mutual_information"`` = ``H[p̄] - mean_s H[p_s]`` (needs ``samples > 1``); higher = more
uncertain; :func:`bnn_nested.evaluation.selective.selective_score`) is ``<= thresholds[i]``;
otherwise it is re-run at the next width. The last stage always answers. With ``temperatures``
(one per width, :mod:`bnn_nested.evaluation.calibration`) every stage's probabilities are
temperature-scaled before the score is taken, so ``msp`` thresholds read as calibrated
confidences.

Cost: an example leaving at stage ``i`` costs ``samples * sum_{j <= i} FLOPs(widths[j])`` (every
stage it visited ran in full, once per Monte-Carlo sample). Thresholds come from validation data:
:func:`calibrate_thresholds` (a quantile of each stage's scores) or :func:`choose_threshold` (one
shared threshold reaching a target accuracy, or the most accurate within a FLOPs budget).

Example::

    val, y_val = stage_probs(model, val_loader, [0.25, 0.5, 1.0], temperatures=temps)
    choice = choose_threshold(val, y_val, flops, target_accuracy=0.97)
    probs, exits = Cascade(model, [0.25, 0.5, 1.0], choice.thresholds, temperatures=temps).predict(x)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from bnn_nested.evaluation.calibration import apply_temperature, temperature_for
from bnn_nested.evaluation.conformal import conformal_threshold, label_scores
from bnn_nested.evaluation.metrics import accuracy, ece, mean_probs
from bnn_nested.evaluation.ood import check_scores
from bnn_nested.evaluation.plots import save_figure
from bnn_nested.evaluation.prediction import predict, predict_loader
from bnn_nested.evaluation.selective import selective_score
from bnn_nested.nest import NestifiedModel

#: A score of probabilities in :data:`bnn_nested.evaluation.ood.SCORES` (``msp``, ``entropy``,
#: ``mutual_information``, ``expected_entropy`` or one a user module registers).
CascadeScore = str


def _check(widths: Sequence[float], thresholds: Sequence[float], score: str) -> None:
    check_scores([score], "score", probabilities=True)
    if not widths or list(widths) != sorted(widths) or len(set(widths)) != len(widths):
        raise ValueError(f"widths must be non-empty and strictly increasing, got {list(widths)}")
    if len(thresholds) != len(widths) - 1:
        raise ValueError(
            f"thresholds must have len(widths) - 1 = {len(widths) - 1} entries, got {len(thresholds)}"
        )


def _two_stages(n: int, widths: Sequence[float] | None = None) -> None:
    """A threshold is chosen between stages: refuse fewer than two, in one line."""
    if n < 2:
        shown = f" ({', '.join(f'{w:g}' for w in widths)})" if widths else ""
        raise ValueError(
            f"widths: a cascade needs at least two widths to escalate between, got {n}{shown}"
        )


def uncertainty(probs: torch.Tensor, score: CascadeScore) -> torch.Tensor:
    """Score ``(N,)`` of probabilities ``(S, N, C)``; higher = more uncertain."""
    return selective_score(probs, score).float()


def stage_probs(
    model: NestifiedModel,
    loader,
    widths: Sequence[float],
    samples: int = 1,
    temperatures: Mapping[float, float] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Probabilities of every example at every width: ``([ (S, N, C) per width ], targets (N,))``,
    temperature-scaled per width when ``temperatures`` is given."""
    out, targets = [], None
    for w in widths:
        p, targets = predict_loader(model, loader, w, samples)
        out.append(apply_temperature(p, temperature_for(temperatures, w)))
    return out, targets


def calibrate_thresholds(
    probs_per_stage: Sequence[torch.Tensor], score: CascadeScore = "entropy", quantile: float = 0.8
) -> list[float]:
    """Per non-final stage, the ``quantile`` of the validation scores at that stage."""
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    return [float(torch.quantile(uncertainty(p, score), quantile)) for p in probs_per_stage[:-1]]


def simulate(
    probs_per_stage: Sequence[torch.Tensor],
    thresholds: Sequence[float],
    score: CascadeScore = "entropy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cascade outcome from precomputed stage probabilities.

    Returns:
        ``(probs (N, C), exit_stage (N,) long)``: the mean probabilities of the stage each example
        left at, and that stage's index.
    """
    n = probs_per_stage[0].shape[1]
    exit_stage = torch.full((n,), len(probs_per_stage) - 1, dtype=torch.long)
    undecided = torch.ones(n, dtype=torch.bool)
    for i, t in enumerate(thresholds):
        leave = undecided & (uncertainty(probs_per_stage[i], score) <= t)
        exit_stage[leave] = i
        undecided &= ~leave
    stacked = torch.stack([mean_probs(p) for p in probs_per_stage])  # (stages, N, C)
    return stacked[exit_stage, torch.arange(n)], exit_stage


def mean_flops(
    exit_stage: torch.Tensor, flops_per_width: Sequence[float], samples: int = 1
) -> float:
    """Mean FLOPs per example: an example leaving at stage ``i`` paid stages ``0..i``, each once
    per Monte-Carlo sample."""
    cum = torch.tensor(flops_per_width, dtype=torch.float64).cumsum(0)
    return float(cum[exit_stage].mean()) * samples


def cascade_metrics(
    probs_per_stage: Sequence[torch.Tensor],
    targets: torch.Tensor,
    thresholds: Sequence[float],
    flops_per_width: Sequence[float],
    score: CascadeScore = "entropy",
    n_bins: int = 15,
    samples: int = 1,
    set_thresholds: Sequence[float] | None = None,
) -> dict[str, float]:
    """``cls/acc``, ``cal/ece``, ``cost/flops`` (mean per example, x ``samples``), the fraction
    leaving per stage (``exit/i``) and, with ``set_thresholds`` (one split-conformal ``thr``
    threshold per stage, :func:`bnn_nested.evaluation.conformal.conformal_threshold`), the coverage
    and mean size of the prediction set of the stage each example left at (``set/coverage``,
    ``set/size``; measured: the per-width guarantee does not carry over to the data-dependent exit)."""

    probs, exits = simulate(probs_per_stage, thresholds, score)
    row = {
        "cls/acc": accuracy(probs, targets),
        "cal/ece": ece(probs, targets, n_bins),
        "cost/flops": mean_flops(exits, flops_per_width, samples),
    }
    if set_thresholds is not None:
        q = torch.tensor(list(set_thresholds), dtype=torch.float64)[exits]
        sets = (1.0 - probs.double()) <= q[:, None]
        row["set/coverage"] = float(sets[torch.arange(len(targets)), targets].double().mean())
        row["set/size"] = float(sets.sum(1).double().mean())
    for i in range(len(probs_per_stage)):
        row[f"exit/{i}"] = float((exits == i).double().mean())
    return row


class Cascade:
    """Online cascade over a batch: only the undecided examples are re-run at the next width.

    Args:
        model: nested model (used in eval; Monte-Carlo mode when ``samples > 1``).
        widths: strictly increasing widths; ``thresholds``: one per non-final stage.
        score: ``"msp"`` (``1 - max p̄``), ``"entropy"`` or ``"mutual_information"``.
        temperatures: width -> ``T``; each stage's probabilities are temperature-scaled.

    Example::

        probs, exits = Cascade(model, [0.25, 1.0], [0.3]).predict(x)   # (B, C), (B,)
    """

    def __init__(
        self,
        model: NestifiedModel,
        widths: Sequence[float],
        thresholds: Sequence[float],
        score: CascadeScore = "entropy",
        samples: int = 1,
        temperatures: Mapping[float, float] | None = None,
    ) -> None:
        _check(widths, thresholds, score)
        self.model, self.widths, self.thresholds = model, list(widths), list(thresholds)
        self.score, self.samples = score, samples
        self.temperatures = dict(temperatures or {})

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(x.shape[0], device=x.device)
        out: torch.Tensor | None = None
        exits = torch.full((x.shape[0],), len(self.widths) - 1, dtype=torch.long, device=x.device)
        for i, w in enumerate(self.widths):
            p = predict(self.model, x[idx], w, self.samples)
            p = apply_temperature(p, temperature_for(self.temperatures, w))
            pm = mean_probs(p)
            if out is None:
                out = pm.new_zeros((x.shape[0], pm.shape[-1]))
            if i == len(self.widths) - 1:
                out[idx] = pm.to(out)
                break
            leave = uncertainty(p, self.score) <= self.thresholds[i]
            out[idx[leave]] = pm[leave].to(out)
            exits[idx[leave]] = i
            idx = idx[~leave]
            if len(idx) == 0:
                break
        assert out is not None
        return out, exits


# --------------------------------------------------------------------------- thresholds from targets

#: Most candidate thresholds :func:`choose_threshold` tries (quantiles of the validation scores).
MAX_CANDIDATES = 1024


@dataclass(frozen=True)
class CascadeChoice:
    """A shared threshold ``tau`` for every non-final stage, with its validation accuracy and mean
    FLOPs; ``feasible`` is ``False`` when no threshold met the target (then the nearest is kept)."""

    threshold: float
    stages: int
    val_accuracy: float
    val_flops: float
    feasible: bool
    rule: str

    @property
    def thresholds(self) -> list[float]:
        return [self.threshold] * (self.stages - 1)


def _sweep(
    probs_per_stage: Sequence[torch.Tensor],
    targets: torch.Tensor,
    taus: torch.Tensor,
    flops_per_width: Sequence[float],
    score: CascadeScore,
    samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean FLOPs of the cascade at every shared threshold in ``taus`` (vectorised
    :func:`simulate`)."""
    k = len(probs_per_stage)
    scores = torch.stack([uncertainty(p, score).double() for p in probs_per_stage[:-1]])
    correct = torch.stack(
        [(mean_probs(p).argmax(-1) == targets).double() for p in probs_per_stage]
    )  # (K, N)
    leave = scores[:, None, :] <= taus[None, :, None]  # (K-1, T, N)
    leave = torch.cat([leave, torch.ones_like(leave[:1])], 0)  # the last stage always answers
    exit_stage = leave.double().argmax(0)  # first stage that lets the example go: (T, N)
    n = correct.shape[1]
    acc = correct[exit_stage, torch.arange(n).expand_as(exit_stage)].mean(1)
    cum = torch.tensor(list(flops_per_width), dtype=torch.float64).cumsum(0)
    fl = cum[exit_stage].mean(1) * samples
    assert k == len(flops_per_width)
    return acc, fl


def choose_threshold(
    probs_per_stage: Sequence[torch.Tensor],
    targets: torch.Tensor,
    flops_per_width: Sequence[float],
    target_accuracy: float | None = None,
    max_flops: float | None = None,
    score: CascadeScore = "msp",
    samples: int = 1,
) -> CascadeChoice:
    """One threshold shared by every non-final stage, chosen on validation data.

    ``target_accuracy``: the cheapest threshold (lowest mean FLOPs, then higher accuracy) whose
    validation accuracy is ``>= target_accuracy``. ``max_flops``: the most accurate threshold
    (ties: cheaper) whose mean FLOPs per example (x ``samples``) is ``<= max_flops``. Exactly one
    of the two. Candidates: ``-inf``, ``+inf`` and up to :data:`MAX_CANDIDATES` quantiles of the
    validation scores of the non-final stages. Nothing fits: the nearest (most accurate, or
    cheapest) with ``feasible=False``.
    """
    if (target_accuracy is None) == (max_flops is None):
        raise ValueError("give exactly one of target_accuracy and max_flops")
    _two_stages(len(probs_per_stage))
    if len(flops_per_width) != len(probs_per_stage):
        raise ValueError("flops_per_width needs one entry per stage")
    if target_accuracy is not None and not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy must be in [0, 1], got {target_accuracy}")
    if max_flops is not None and not (math.isfinite(max_flops) and max_flops > 0):
        raise ValueError(f"max_flops must be a finite number > 0, got {max_flops}")
    targets = targets.long()
    pooled = torch.cat([uncertainty(p, score).double() for p in probs_per_stage[:-1]])
    if pooled.numel() > MAX_CANDIDATES:
        pooled = torch.quantile(pooled, torch.linspace(0, 1, MAX_CANDIDATES, dtype=torch.float64))
    taus = torch.cat(
        [torch.tensor([-math.inf, math.inf], dtype=torch.float64), torch.unique(pooled)]
    )
    acc, fl = _sweep(probs_per_stage, targets, taus, flops_per_width, score, samples)
    if target_accuracy is not None:
        ok = acc >= target_accuracy - 1e-12
        rule = f"val accuracy >= {target_accuracy:g}, fewest FLOPs"
        key = torch.stack([fl, -acc], 1)  # minimise FLOPs, then maximise accuracy
        fallback = torch.stack([-acc, fl], 1)
    else:
        ok = fl <= max_flops * (1 + 1e-12)
        rule = f"mean FLOPs <= {max_flops:g}, highest val accuracy"
        key = torch.stack([-acc, fl], 1)
        fallback = torch.stack([fl, -acc], 1)
    pool = ok if ok.any() else torch.ones_like(ok)
    order = key if ok.any() else fallback
    idx = [i for i in range(len(taus)) if pool[i]]
    best = min(idx, key=lambda i: (float(order[i, 0]), float(order[i, 1]), float(taus[i])))
    return CascadeChoice(
        float(taus[best]),
        len(probs_per_stage),
        float(acc[best]),
        float(fl[best]),
        bool(ok.any()),
        rule,
    )


# --------------------------------------------------------------------------- runs


@dataclass
class CascadeReport:
    """Test-set rows of the cascade and of every fixed width (``cls/acc``, ``cal/ece``,
    ``cost/flops`` per example x samples, ``set/coverage``, ``set/size``), and the choice."""

    widths: list[float]
    choice: CascadeChoice
    cascade: dict[str, float]
    fixed: dict[float, dict[str, float]]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "meta": self.meta,
            "choice": {**self.choice.__dict__, "thresholds": self.choice.thresholds},
            "cascade": self.cascade,
            "fixed": {f"{w:g}": r for w, r in self.fixed.items()},
        }

    def table(self) -> str:
        head = f"{'setting':>12} {'acc':>7} {'ECE':>7} {'coverage':>8} {'set size':>8} {'FLOPs/example':>14}"
        lines = [head, "-" * len(head)]

        def line(name: str, r: dict[str, float]) -> str:
            return (
                f"{name:>12} {r['cls/acc']:7.4f} {r['cal/ece']:7.4f} "
                f"{r.get('set/coverage', math.nan):8.4f} {r.get('set/size', math.nan):8.3f} "
                f"{r['cost/flops']:14.4g}"
            )

        for w, r in self.fixed.items():
            lines.append(line(f"width {w:g}", r))
        lines.append(line("cascade", self.cascade))
        return "\n".join(lines)


def cascade_report(
    model: NestifiedModel,
    val_loader,
    test_loader,
    widths: Sequence[float],
    flops_per_width: Sequence[float],
    samples: int = 1,
    temperatures: Mapping[float, float] | None = None,
    target_accuracy: float | None = None,
    max_flops: float | None = None,
    score: CascadeScore = "msp",
    alpha: float = 0.1,
    n_bins: int = 15,
    val: tuple[list[torch.Tensor], torch.Tensor] | None = None,
    test: tuple[list[torch.Tensor], torch.Tensor] | None = None,
) -> CascadeReport:
    """Choose the threshold on validation data, then report the cascade and every fixed width on
    the test data (set coverage at level ``1 - alpha`` with ``thr`` thresholds calibrated per width
    on the validation data). ``val`` / ``test``: precomputed :func:`stage_probs` outputs."""

    _check(widths, [0.0] * (len(widths) - 1), score)
    _two_stages(len(widths), widths)
    val = val or stage_probs(model, val_loader, widths, samples, temperatures)
    test = test or stage_probs(model, test_loader, widths, samples, temperatures)
    (pv, yv), (pt, yt) = val, test
    choice = choose_threshold(pv, yv, flops_per_width, target_accuracy, max_flops, score, samples)
    qs = [conformal_threshold(label_scores(p, yv, "thr"), alpha) for p in pv]
    fixed = {}
    for i, w in enumerate(widths):
        fixed[float(w)] = cascade_metrics(
            [pt[i]], yt, [], [flops_per_width[i]], score, n_bins, samples, [qs[i]]
        )
        fixed[float(w)].pop("exit/0")
    row = cascade_metrics(pt, yt, choice.thresholds, flops_per_width, score, n_bins, samples, qs)
    meta = {
        "samples": samples,
        "score": score,
        "alpha": alpha,
        "temperatures": {f"{w:g}": temperature_for(temperatures, w) for w in widths},
        "n_val": len(yv),
        "n_test": len(yt),
    }
    return CascadeReport([float(w) for w in widths], choice, row, fixed, meta)


def cascade_plot(reports: Mapping[str, CascadeReport] | CascadeReport, path, title: str = ""):
    """Test accuracy against mean FLOPs per example: the fixed widths as one line, each cascade as
    a marker; one legend."""
    from matplotlib.figure import Figure  # deferred: heavy (matplotlib), only this path needs it

    if isinstance(reports, CascadeReport):
        reports = {"cascade": reports}
    first = next(iter(reports.values()))
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    xs = [r["cost/flops"] for r in first.fixed.values()]
    ys = [r["cls/acc"] for r in first.fixed.values()]
    ax.plot(xs, ys, marker="o", color="tab:blue", label="fixed widths")
    for w, x, y in zip(first.fixed, xs, ys):
        ax.annotate(f"{w:g}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    markers = "*^sDv<>"
    for i, (name, rep) in enumerate(reports.items()):
        ax.plot(
            rep.cascade["cost/flops"],
            rep.cascade["cls/acc"],
            linestyle="none",
            marker=markers[i % len(markers)],
            markersize=10,
            label=name,
        )
    ax.set_xlabel(f"mean FLOPs per example (2 x MACs, x {first.meta.get('samples', 1)} MC samples)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
