"""``bnn-nested compare RUN1 RUN2 ...``: side-by-side table and overlay plots of evaluated runs.

Each run must have been evaluated (``report.json``); writes ``compare.json``, ``compare.md`` and
``plots/*_vs_width.png`` under ``--out``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bnn_nested.cli.common import UsageError
from bnn_nested.io import JsonFileError, atomic_write_json, atomic_write_text, is_number, read_json


def add_parser(sub) -> None:
    c = sub.add_parser("compare", help="compare evaluated runs side by side")
    c.add_argument("runs", nargs="+", help="run directories with a report.json")
    c.add_argument("--out", default="runs/compare", help="output folder (default runs/compare)")
    c.add_argument(
        "--metrics",
        default="cls/acc,cls/nll,cal/ece",
        help="comma-separated report keys to compare",
    )
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
            vals = " | ".join(f"{data[m][n][f'{w:g}']:.4f}" for n in reports)
            lines.append(f"| {w:g} | {vals} |")
        lines.append("")
    return "\n".join(lines), data


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
    md, data = compare_reports(reports, metrics)
    out = Path(args.out)
    atomic_write_json(out / "compare.json", data)
    atomic_write_text(out / "compare.md", "# Comparison\n\n" + md)
    for m in metrics:
        series = {n: ([float(w) for w in v], list(v.values())) for n, v in data[m].items()}
        metric_vs_x(series, "width", m, out / "plots" / f"{m.replace('/', '_')}_vs_width.png")
    print(md)
    print(f"written: {out / 'compare.md'}, {out / 'compare.json'}, {out / 'plots'}/")
    return 0
