"""``bnn-nested compare RUN1 RUN2 ...``: side-by-side table and overlay plots of evaluated runs.

Each run must have been evaluated (``report.json``); writes ``compare.json`` (valid JSON: an
undefined metric is ``null``), ``compare.md`` and ``plots/*_vs_width.png`` under ``--out``, and
removes the ``*_vs_width.png`` a previous compare left there for metrics not compared now.

``--out`` must be a new or empty folder, or one an earlier compare wrote (it holds
:data:`MARKER`); any other existing folder is refused (exit 2, nothing written), so a user's own
``compare.md`` or plots are never replaced. ``--out`` defaults to ``compare/`` beside the runs (in the deepest folder holding all of them:
``runs/A runs/B`` -> ``runs/compare``), so the result does not depend on the working directory.
Runs evaluated on different data sets (``meta.data`` of their reports) are refused unless
``--mixed-data`` is given; their rows are then flagged in ``compare.md``.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from bnn_nested.cli.common import UsageError
from bnn_nested.io import JsonFileError, atomic_write_json, atomic_write_text, is_number, read_json
from bnn_nested.threads import add_threads_argument

#: File name pattern of the plots compare writes (and may remove when stale).
PLOT_SUFFIX = "_vs_width.png"
#: Written first into every folder compare writes: only a folder holding it is written again.
MARKER = ".bnn-nested-compare"


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="compare evaluated runs side by side")
    c.add_argument("runs", nargs="+", help="run directories with a report.json")
    c.add_argument(
        "--out",
        default=None,
        help="output folder (default: compare/ in the folder holding the runs, e.g. runs/compare)",
    )
    c.add_argument(
        "--mixed-data",
        action="store_true",
        help="allow runs evaluated on different data sets (flagged in compare.md)",
    )
    c.add_argument(
        "--metrics",
        default="cls/acc,cls/nll,cal/ece",
        help="comma-separated report keys to compare",
    )
    add_threads_argument(c)  # accepted like every command; compare runs no tensor code
    c.set_defaults(handler=run)


def compare_reports(reports: dict[str, dict], metrics: list[str]) -> tuple[str, dict]:
    """Markdown table (one row per width, one column per run x metric) and its data."""
    widths = sorted({float(w) for r in reports.values() for w in r["widths"]})
    data: dict[str, dict[str, dict[str, float]]] = {m: {} for m in metrics}
    for m in metrics:
        for name, r in reports.items():
            rows = {f"{float(k):g}": v for k, v in r["widths"].items()}
            data[m][name] = {f"{w:g}": _metric(rows.get(f"{w:g}", {}), m) for w in widths}
    lines = []
    for m in metrics:
        lines += [
            f"### {m}",
            "",
            "| width | " + " | ".join(reports) + " |",
            "|---|" + "---|" * len(reports),
        ]
        for w in widths:
            vals = " | ".join(_cell(data[m][n][f"{w:g}"]) for n in reports)
            lines.append(f"| {w:g} | {vals} |")
        lines.append("")
    return "\n".join(lines), data


def _cell(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.4f}"


def default_out(runs: list[str]) -> Path:
    """``compare/`` in the deepest folder holding every run (``runs/A runs/B`` -> ``runs/compare``)."""
    parents = [os.path.abspath(os.path.join(r, os.pardir)) for r in runs]
    return Path(os.path.relpath(os.path.join(os.path.commonpath(parents), "compare")))


def data_sets(reports: dict[str, dict]) -> dict[str, str]:
    """Run name -> the data set its report was evaluated on (``"?"`` when not recorded)."""
    out = {}
    for name, r in reports.items():
        meta = r.get("meta") if isinstance(r.get("meta"), dict) else {}
        out[name] = str(meta.get("data", "?"))[:60]
    return out


def remove_stale_plots(plots: Path, keep: set[str]) -> list[Path]:
    """Delete ``plots/*_vs_width.png`` not in ``keep`` (left by an earlier compare with other
    metrics); only regular files with compare's name pattern are touched."""
    removed = []
    if plots.is_dir():
        for p in sorted(plots.glob(f"*{PLOT_SUFFIX}")):
            if p.name not in keep and p.is_file() and not p.is_symlink():
                p.unlink()
                removed.append(p)
    return removed


def check_out(out: Path) -> None:
    """Refuse ``out`` unless compare may write it: missing, an empty folder, or a folder an earlier
    compare wrote (it holds :data:`MARKER`). Touches nothing."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a folder; choose another --out")
    if not out.is_dir():
        return
    try:
        empty = next(out.iterdir(), None) is None
    except OSError as err:
        raise UsageError(f"--out: cannot read {out} ({err.strerror or err})") from None
    if not empty and not (out / MARKER).is_file():
        raise UsageError(
            f"--out: {out} already exists and was not written by bnn-nested compare (no "
            f"{MARKER}); compare does not replace files it did not write; choose another --out"
        )


def check_report(path: Path, report: Any) -> dict:
    """``report`` as :meth:`Report.to_dict` writes it: ``{"widths": {width: {metric: number}}}``
    with widths in (0, 1]; else a one-line :class:`UsageError` naming ``path``."""
    what = f"{path}: malformed report"
    if not isinstance(report, dict) or not isinstance(report.get("widths"), dict):
        raise UsageError(f"{what} (needs a 'widths' mapping); re-run `bnn-nested evaluate`")
    for w, row in report["widths"].items():
        try:
            ok = 0.0 < float(w) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{what} (width {w[:40]!r} is not a number in (0, 1])")
        if not isinstance(row, dict):
            raise UsageError(f"{what} (width {w[:40]}: metrics must be a mapping)")
        for k, v in row.items():
            if not is_number(v) and v is not None:
                raise UsageError(f"{what} (width {w[:40]}, {k[:60]}: not a number)")
    return report


def _metric(row: dict, m: str) -> float:
    v = row.get(m, math.nan)
    return float(v) if is_number(v) else math.nan


def run(args) -> int:
    from bnn_nested.evaluation.plots import metric_vs_x  # deferred: imports torch and matplotlib

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if not metrics:
        raise UsageError(
            f"--metrics: no metric names in {args.metrics[:60]!r}; e.g. cls/acc,cls/nll,cal/ece"
        )
    reports: dict[str, dict] = {}
    for r in args.runs:
        path = Path(r) / "report.json"
        if not path.is_file():
            raise UsageError(f"{path} not found: run `bnn-nested evaluate {r}` first")
        name = Path(r).name
        if name in reports:
            name = str(Path(r))
        try:
            reports[name] = check_report(path, read_json(path, "report"))
        except JsonFileError as err:
            raise UsageError(f"{err}; re-run `bnn-nested evaluate {r}`") from None
    sets = data_sets(reports)
    listed = ", ".join(f"{n}: {d}" for n, d in sets.items())[:300]
    mixed = len(set(sets.values())) > 1
    if mixed and not args.mixed_data:
        raise UsageError(
            f"runs were evaluated on different data sets ({listed}); their metrics are not "
            "comparable; pass --mixed-data to compare them anyway"
        )
    available = {
        k
        for r in reports.values()
        for row in r["widths"].values()
        for k, v in row.items()
        if is_number(v)
    }
    missing = [m for m in metrics if m not in available]
    if missing:
        shown = ", ".join(sorted(available))[:200]
        raise UsageError(f"--metrics: {str(missing)[:100]} not in the reports; available: {shown}")
    head = "# Comparison\n\n"
    if mixed:
        head += f"**Warning: the runs were evaluated on different data sets** ({listed}).\n\n"
    else:
        head += f"Data set: {next(iter(sets.values()))}.\n\n"
    if mixed:
        print(f"bnn-nested: warning: runs on different data sets ({listed})", file=sys.stderr)
    md, data = compare_reports(reports, metrics)
    if args.out is not None and not args.out.strip():
        raise UsageError("--out: empty path; name the folder to write")
    out = Path(args.out) if args.out is not None else default_out(args.runs)
    check_out(out)
    atomic_write_json(out / MARKER, {"tool": "bnn-nested", "kind": "compare"})
    atomic_write_json(out / "compare.json", data, strict=True)  # NaN -> null
    atomic_write_text(out / "compare.md", head + md)
    names = {f"{m.replace('/', '_')}{PLOT_SUFFIX}" for m in metrics}
    remove_stale_plots(out / "plots", names)
    for m in metrics:
        series = {n: ([float(w) for w in v], list(v.values())) for n, v in data[m].items()}
        metric_vs_x(series, "width", m, out / "plots" / f"{m.replace('/', '_')}{PLOT_SUFFIX}")
    print(head + md)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'plots'}/")
    return 0
