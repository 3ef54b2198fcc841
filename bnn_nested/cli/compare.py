"""``bnn-nested compare RUN1 RUN2 ...``: side-by-side table and overlay plots of evaluated runs.

Each run must have been evaluated (``report.json``); writes ``compare.json``, ``compare.md`` and
``plots/*_vs_width.png`` under ``--out``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bnn_nested.cli.common import UsageError


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
            data[m][name] = {
                f"{w:g}": r["widths"].get(f"{w:g}", {}).get(m, math.nan) for w in widths
            }
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


def run(args) -> int:
    from bnn_nested.evaluation.plots import metric_vs_x
    from bnn_nested.io import atomic_write_json, atomic_write_text

    reports: dict[str, dict] = {}
    for r in args.runs:
        path = Path(r) / "report.json"
        if not path.is_file():
            raise UsageError(f"{path} not found: run `bnn-nested evaluate {r}` first")
        name = Path(r).name
        if name in reports:
            name = str(Path(r))
        reports[name] = json.loads(path.read_text())
    metrics = [m for m in args.metrics.split(",") if m]
    available = {k for r in reports.values() for row in r["widths"].values() for k in row}
    missing = [m for m in metrics if m not in available]
    if missing:
        raise UsageError(f"--metrics: {missing} not in the reports; available: {sorted(available)}")
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
