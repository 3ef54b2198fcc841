"""PNG plots for reports: reliability diagrams, metric-vs-width/FLOPs curves, keep probabilities.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no ``pyplot``, no global
backend change, never ``plt.show``) and written atomically: saved to a temporary file in the
target directory, then moved into place with ``os.replace``, so a reader never sees a half-written
PNG and a failed save leaves no stray file.

Example::

    reliability_diagram(reliability_data(probs, targets), "out/reliability.png", "width 0.5")
    metric_vs_x({"BNNN": (widths, accs)}, "width", "accuracy", "out/acc_vs_width.png")
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from torch import Tensor

from bnn_nested.evaluation.metrics import ReliabilityData
from bnn_nested.io import atomic_write

__all__ = [
    "reliability_diagram",
    "metric_vs_x",
    "keep_prob_plot",
    "risk_coverage_plot",
    "save_figure",
]

_DPI = 120
#: Colour of the hatched gap patches of a reliability diagram (and of their legend entry).
GAP_COLOR = "tab:red"


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (temp file in the same dir + ``os.replace``).

    Creates missing parent directories. Returns the final path.

    Example::

        fig = Figure(); fig.add_subplot().plot([0, 1])
        save_figure(fig, "out/line.png")
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in '.png'; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=_DPI, bbox_inches="tight"))
    return path


def compact_number(v: float) -> str:
    """Short tick label: ``120000 -> "120k"``, ``2.46e6 -> "2.46M"``, ``0.25 -> "0.25"``."""
    a = abs(v)
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _to_numpy(x: Tensor | Sequence[float] | np.ndarray) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=float)


def reliability_diagram(
    data: ReliabilityData, path: str | os.PathLike[str], title: str = ""
) -> Path:
    """Reliability diagram: per-bin accuracy bars against the diagonal, counts below.

    Bars show accuracy per confidence bin; the hatched part is the gap to the bin's mean
    confidence; the lower panel shows how many examples fall in each bin. ECE and MCE from
    ``data`` are printed in the legend.

    Args:
        data: output of :func:`bnn_nested.evaluation.metrics.reliability_data`.
        path: output ``.png`` path (written atomically).
        title: figure title.

    Returns:
        The written path.

    Example::

        reliability_diagram(reliability_data(probs, targets, 15), "rel.png", "width 1.0")
    """
    if not isinstance(data, ReliabilityData):
        raise ValueError("data must be a ReliabilityData (from metrics.reliability_data)")
    edges = _to_numpy(data.edges)
    counts = _to_numpy(data.counts)
    acc = np.nan_to_num(_to_numpy(data.accuracy))
    conf = _to_numpy(data.confidence)
    conf = np.where(np.isnan(conf), 0.5 * (edges[:-1] + edges[1:]), conf)
    widths = np.diff(edges)
    left = edges[:-1]

    fig = Figure(figsize=(4.5, 5.5), layout="constrained")
    ax, ax_count = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    nonempty = counts > 0
    ax.bar(
        left, acc, width=widths, align="edge", edgecolor="black", color="tab:blue", label="accuracy"
    )
    gap_bottom = np.minimum(acc, conf)
    # Unfilled, hatched in red: over a bar and over the background alike it shows the same red
    # hatching as its legend entry (a translucent fill blended with the blue bar into a colour
    # the legend does not show).
    ax.bar(
        left[nonempty],
        np.abs(conf - acc)[nonempty],
        bottom=gap_bottom[nonempty],
        width=widths[nonempty],
        align="edge",
        fill=False,
        hatch="///",
        edgecolor=GAP_COLOR,
        linewidth=1.0,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(
        loc="upper left",
        fontsize=8,
        title=f"ECE {data.ece:.4f}  MCE {data.mce:.4f}",
        title_fontsize=8,
    )
    ax_count.bar(left, counts, width=widths, align="edge", color="gray", edgecolor="black")
    ax_count.set_xlabel("confidence")
    ax_count.set_ylabel("count")
    return save_figure(fig, path)


def metric_vs_x(
    series: Mapping[str, tuple[Sequence[float] | Tensor, Sequence[float] | Tensor]],
    xlabel: str,
    ylabel: str,
    path: str | os.PathLike[str],
    title: str = "",
    logx: bool = False,
) -> Path:
    """One line per method of a metric (accuracy, NLL, ECE, AUROC, ...) against width or FLOPs.

    Args:
        series: label -> ``(xs, ys)``, two equal-length 1-D sequences (sorted by ``xs`` here).
        xlabel: e.g. ``"width r"`` or ``"FLOPs (= 2 x MACs)"``.
        ylabel: e.g. ``"accuracy"``.
        path: output ``.png`` path (written atomically).
        title: figure title.
        logx: logarithmic x axis (useful for FLOPs).

    Returns:
        The written path.

    Raises:
        ValueError: empty ``series`` or mismatched / non-1-D ``xs``, ``ys``.

    Example::

        metric_vs_x({"BNNN": ([0.25, 0.5, 1.0], [0.9, 0.95, 0.97])}, "width", "accuracy",
                    "acc_vs_width.png")
    """
    if not series:
        raise ValueError("series must map at least one label to (xs, ys)")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for label, pair in series.items():
        if len(pair) != 2:
            raise ValueError(f"series[{label!r}] must be a pair (xs, ys)")
        xs, ys = _to_numpy(pair[0]), _to_numpy(pair[1])
        if xs.ndim != 1 or ys.shape != xs.shape or xs.size == 0:
            raise ValueError(
                f"series[{label!r}] xs and ys must be non-empty 1-D of equal length; "
                f"got {xs.shape} and {ys.shape}"
            )
        order = np.argsort(xs, kind="stable")
        ax.plot(xs[order], ys[order], marker="o", markersize=4, label=str(label))
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: compact_number(v)))
    ax.tick_params(axis="x", labelsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def risk_coverage_plot(
    curves: Mapping[float | str, tuple[Sequence[float] | Tensor, Sequence[float] | Tensor]],
    path: str | os.PathLike[str],
    title: str = "selective prediction: risk vs coverage",
) -> Path:
    """Risk-coverage curves (selective risk of the answered examples against the fraction
    answered), one line per width, AURC in the legend.

    Args:
        curves: width (or label) -> ``(coverage, risk)`` from
            :func:`bnn_nested.evaluation.selective.risk_coverage`.
        path: output ``.png`` path (written atomically).

    Example::

        risk_coverage_plot({1.0: risk_coverage(errors, 1 - conf)}, "rc.png")
    """
    if not curves:
        raise ValueError("curves must map at least one width to (coverage, risk)")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for label, (cov, risk) in curves.items():
        c, r = _to_numpy(cov), _to_numpy(risk)
        name = f"width {label:g}" if isinstance(label, (int, float)) else str(label)
        ax.plot(c, r, linewidth=1.5, label=f"{name} (AURC {float(np.mean(r)):.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (fraction of examples answered)")
    ax.set_ylabel("selective risk (error rate of answered)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def keep_prob_plot(
    keep_probs: Mapping[str, Tensor | Sequence[float]],
    path: str | os.PathLike[str],
    title: str = "learned keep probability per group",
    prior: Mapping[str, Tensor | Sequence[float]] | None = None,
    initial: Mapping[str, Tensor | Sequence[float]] | None = None,
    history: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Bar chart per layer of the learned keep probability of each ordered channel group, and with
    ``history`` (layer name -> expected groups per epoch) one more panel of those curves.

    Group ``k`` (1-based, in the nesting order) is kept with probability ``keep_probs[layer][k-1]``;
    under the ordered (Downhill) masks this is non-increasing in ``k``.

    Args:
        keep_probs: layer name -> ``(K,)`` keep probabilities in ``[0, 1]``, in network order.
        path: output ``.png`` path (written atomically).
        title: figure title.
        prior: layer name -> the prior's keep probabilities (drawn as a line), optional.
        initial: layer name -> the keep probabilities before training (dashed line), optional.

    Returns:
        The written path.

    Raises:
        ValueError: empty mapping or a non-1-D / empty entry.

    Example::

        keep_prob_plot({"fc1": torch.tensor([1.0, 0.9, 0.4]), "fc2": torch.ones(4)},
                       "keep_probs.png")
    """
    if not keep_probs:
        raise ValueError("keep_probs must map at least one layer name to a 1-D tensor")
    arrays = {}
    for name, values in keep_probs.items():
        arr = _to_numpy(values)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(
                f"keep_probs[{name!r}] must be a non-empty 1-D tensor; got {arr.shape}"
            )
        arrays[name] = arr
    n = len(arrays)
    panels = n + (1 if history else 0)
    ncols = min(panels, 3)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(3.2 * ncols, 2.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (name, arr) in zip(axes, arrays.items()):
        groups = np.arange(1, arr.size + 1)
        ax.bar(
            groups,
            arr,
            width=0.8,
            color="tab:green",
            edgecolor="black",
            linewidth=0.5,
            label="learned",
        )
        for extra, style, label in ((initial, "--", "initial"), (prior, "-", "prior")):
            if extra is not None and name in extra:
                ys = _to_numpy(extra[name])
                if ys.shape == arr.shape:
                    color = "tab:orange" if label == "initial" else "black"
                    ax.step(groups, ys, where="mid", linestyle=style, color=color, label=label)
        if prior is not None or initial is not None:
            ax.legend(fontsize=6, loc="lower left")  # learned bars, initial and prior lines
        ax.set_ylim(0, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(str(name), fontsize=9)
        ax.set_xlabel("group (ordered)", fontsize=8)
        ax.set_ylabel("keep prob.", fontsize=8)
    if history:
        ax = axes[n]
        for name, values in history.items():
            ax.plot(np.arange(1, len(values) + 1), list(values), marker=".", label=str(name))
        ax.set_title("expected groups per epoch", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("E[groups]", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=6)
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return save_figure(fig, path)
