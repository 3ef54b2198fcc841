"""Files and outputs people read and share: file modes, strict JSON, compare's data-set check,
stale plots and output folder, readable plots, AUROC-below-chance warnings, split tables, the
ordering report's prior and change from initialisation, latency ranking within noise."""

from __future__ import annotations

import json
import math
import os
import stat

import numpy as np
import pytest
import torch

from bnn_nested.cli.main import main
from bnn_nested.deploy.select import Candidate, Constraints, latency_differs, select_width
from bnn_nested.evaluation.metrics import reliability_data
from bnn_nested.evaluation.ood import BELOW_CHANCE_EXPLANATION, below_chance
from bnn_nested.evaluation.ordering import add_initial, ordering_table, write_ordering_report
from bnn_nested.evaluation.plots import GAP_COLOR, compact_number, reliability_diagram
from bnn_nested.evaluation.report import Report
from bnn_nested.io import atomic_write_json, atomic_write_text, current_umask


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_honour_the_umask(tmp_path, mask, expected):
    old = os.umask(mask)
    try:
        assert current_umask() == mask
        a = atomic_write_text(tmp_path / "a.txt", "x")
        b = atomic_write_json(tmp_path / "b.json", {"x": 1})
        fig_path = reliability_diagram(
            reliability_data(torch.full((4, 2), 0.5), torch.tensor([0, 1, 0, 1]), 5),
            tmp_path / "r.png",
        )
    finally:
        os.umask(old)
    assert [_mode(p) for p in (a, b, fig_path)] == [expected] * 3


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_writes_null_for_nan(tmp_path):
    p = atomic_write_json(tmp_path / "c.json", {"a": [1.0, math.nan, -math.inf]}, strict=True)
    assert _strict_loads(p.read_text()) == {"a": [1.0, None, None]}


def _report(path, data="digits", widths=None):
    widths = widths or {"0.25": {"cls/acc": 0.8, "cal/ece": 0.05}, "1": {"cls/acc": 0.9}}
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps({"meta": {"data": data}, "widths": widths}))
    return str(path)


def test_compare_json_is_valid_and_output_sits_beside_the_runs(tmp_path, monkeypatch, capsys):
    a = _report(tmp_path / "runs" / "A")
    b = _report(tmp_path / "runs" / "B", widths={"0.5": {"cls/acc": 0.85, "cal/ece": 0.04}})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compare", a, b, "--metrics", "cls/acc,cal/ece"]) == 0
    out = tmp_path / "runs" / "compare"  # not elsewhere/runs/compare
    assert not (elsewhere / "runs").exists()
    data = _strict_loads((out / "compare.json").read_text())
    assert data["cal/ece"]["A"]["1"] is None and data["cls/acc"]["B"]["0.5"] == 0.85
    assert "Data set: digits" in (out / "compare.md").read_text()


def test_compare_refuses_runs_on_different_data_sets(tmp_path, capsys):
    a = _report(tmp_path / "A")
    b = _report(tmp_path / "B", data="mnist5k")
    out = tmp_path / "cmp"
    assert main(["compare", a, b, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "different data sets" in err and "A: digits" in err and "--mixed-data" in err
    assert not out.exists()
    assert main(["compare", a, b, "--out", str(out), "--metrics", "cls/acc", "--mixed-data"]) == 0
    assert "different data sets" in capsys.readouterr().err
    assert (
        "Warning: the runs were evaluated on different data sets"
        in (out / "compare.md").read_text()
    )


def test_compare_removes_its_stale_plots_only(tmp_path):
    a, b = _report(tmp_path / "A"), _report(tmp_path / "B")
    out = tmp_path / "cmp"
    assert main(["compare", a, b, "--out", str(out), "--metrics", "cls/acc,cal/ece"]) == 0
    (out / "plots" / "mine.png").write_bytes(b"x")  # not compare's: kept
    assert main(["compare", a, b, "--out", str(out), "--metrics", "cls/acc"]) == 0
    names = sorted(p.name for p in (out / "plots").iterdir())
    assert names == ["cls_acc_vs_width.png", "mine.png"]


def test_compact_tick_labels():
    labels = [compact_number(v) for v in (100000, 120000, 140000, 2.46e4, 1.5e6, 0.25, 0.0)]
    assert labels == ["100k", "120k", "140k", "24.6k", "1.5M", "0.25", "0"]


def test_flops_axis_labels_are_short(tmp_path, monkeypatch):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bnn_nested.evaluation import plots

    saved = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: saved.setdefault("fig", fig))
    plots.metric_vs_x(
        {"m": ([1e5, 1.2e5, 1.4e5, 1.6e5, 1.8e5], [1, 2, 3, 4, 5])}, "FLOPs", "a", "x.png"
    )
    fig: Figure = saved["fig"]
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]
    texts = [t.get_text() for t in ticks]
    assert 2 <= len(texts) <= 6 and all(len(t) <= 5 for t in texts), texts
    # the labels do not overlap once drawn
    boxes = sorted((t.get_window_extent().x0, t.get_window_extent().x1) for t in ticks)
    assert all(a[1] < b[0] for a, b in zip(boxes, boxes[1:])), boxes


def test_reliability_gap_has_the_legend_colour(tmp_path):
    """The gap over a bar is drawn in the legend's red, never blended with the bar's blue."""
    import matplotlib.colors as mcolors
    from matplotlib.image import imread

    probs = torch.tensor([[0.95, 0.05]] * 50)  # confidence 0.95, accuracy 0.5: a large gap
    targets = torch.tensor([0, 1] * 25)
    path = reliability_diagram(reliability_data(probs, targets, 10), tmp_path / "r.png")
    img = imread(path)[..., :3]
    blue = np.array(mcolors.to_rgb("tab:blue"))
    red = np.array(mcolors.to_rgb(GAP_COLOR))
    blend = 0.3 * red + 0.7 * blue  # the old translucent fill over the bar
    near = np.linalg.norm(img - blend, axis=-1) < 0.06
    reds = np.linalg.norm(img - red, axis=-1) < 0.15
    assert reds.sum() > 200  # the hatching is drawn
    assert near.sum() < 0.1 * reds.sum(), (near.sum(), reds.sum())


def _ood_report(auroc: float, sets: int = 1) -> Report:
    rows = {}
    for w in (0.25, 1.0):
        row = {"cls/acc": 0.9, "cls/nll": 0.3, "cls/brier": 0.1, "cal/ece": 0.02}
        for i in range(sets):
            for s in ("entropy", "mutual_information"):
                row[f"ood/set{i}_with_a_long_name/{s}/auroc"] = auroc + 0.01 * w
        rows[w] = row
    return Report(rows=rows, meta={"run": "r"})


def test_auroc_below_chance_is_flagged_and_explained():
    rep = _ood_report(0.09)
    notes = rep.warnings()
    assert notes == [
        "ood/set0_with_a_long_name/entropy/auroc is below 0.5 (chance) at width(s) 0.25, 1: "
        "0.09-0.10",
        "ood/set0_with_a_long_name/mutual_information/auroc is below 0.5 (chance) at width(s) "
        "0.25, 1: 0.09-0.10",
    ]
    md = rep.markdown()
    assert "**Warning:**" in md and BELOW_CHANCE_EXPLANATION in md
    assert _ood_report(0.7).warnings() == [] and "Warning" not in _ood_report(0.7).markdown()
    assert below_chance({1.0: {"ood/x/msp/auroc": math.nan}}) == []


def test_wide_tables_are_split():
    rep = _ood_report(0.8, sets=4)
    text = rep.table()
    assert max(len(line) for line in text.splitlines()) <= 120
    for key in rep.keys():
        if key.endswith("/auroc"):
            assert key in text
    assert text.count("width") >= 2  # every block starts with the width column
    narrow = _ood_report(0.8, sets=0).table()
    assert "\n\n" not in narrow


def test_ordering_report_shows_prior_and_change_from_init(tmp_path):
    from tests.zoo import mlp

    torch.manual_seed(0)
    model = mlp(8, 3, hidden=[16], groups=4, kept=1)
    from bnn_nested.evaluation.ordering import keep_probs_now

    initial = keep_probs_now(model)
    paths = write_ordering_report(model, tmp_path, initial)
    md = paths["markdown"].read_text()
    assert "barely moved" in md and "within 0.0000" in md and "at init" in md
    report = json.loads(paths["json"].read_text())
    name = next(iter(report))
    shifted = {name: [p - 0.2 for p in initial[name]]}
    rep2 = add_initial(json.loads(paths["json"].read_text()), shifted)
    expected = max(abs(a - b) for a, b in zip(rep2[name]["keep_probs"], shifted[name]))
    assert rep2[name]["max_change_from_init"] == pytest.approx(expected) == pytest.approx(0.2)
    text = ordering_table(rep2)
    assert "barely moved" not in text and "largest change" in text
    rep3 = {k: {kk: vv for kk, vv in v.items() if "init" not in kk} for k, v in report.items()}
    assert "Initial keep probabilities were not recorded" in ordering_table(rep3)


def test_latency_ranks_only_beyond_its_spread():
    a = Candidate(0.5, 100, 10, 0.9, 0.05, latency_ms=1.0, latency_iqr_ms=0.5)
    b = Candidate(0.75, 100, 9, 0.9, 0.05, latency_ms=1.3, latency_iqr_ms=0.5)
    assert not latency_differs(a, b)  # 0.3 ms apart, IQR 0.5: noise; fewer params wins
    assert select_width([a, b], Constraints()).chosen is b
    a2 = Candidate(0.5, 100, 10, 0.9, 0.05, latency_ms=1.0, latency_iqr_ms=0.05)
    b2 = Candidate(0.75, 100, 9, 0.9, 0.05, latency_ms=1.3, latency_iqr_ms=0.05)
    assert latency_differs(a2, b2)
    assert select_width([a2, b2], Constraints()).chosen is a2
    assert "IQR 0.05" in select_width([a2, b2], Constraints()).explanation
