"""Tests for bnn_nested.evaluation.plots: PNGs are written atomically and open as images."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest
import torch
from matplotlib.figure import Figure

from bnn_nested.evaluation import plots as P
from bnn_nested.evaluation.metrics import reliability_data


def _assert_image(path, tmp_dir):
    assert path.exists()
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0  # not a blank canvas
    leftovers = [p.name for p in tmp_dir.rglob("*") if p.is_file() and p != path]
    assert not [n for n in leftovers if "tmp" in n or n.startswith(".")]


def test_reliability_diagram(tmp_path):
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(3, 200, 10, generator=g), -1)
    targets = torch.randint(0, 10, (200,), generator=g)
    out = P.reliability_diagram(reliability_data(probs, targets), tmp_path / "rel.png", "test")
    _assert_image(out, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.png"]


def test_metric_vs_x_creates_parent_and_overwrites(tmp_path):
    path = tmp_path / "sub" / "acc.png"
    series = {
        "nested": (torch.tensor([0.25, 1.0, 0.5]), torch.tensor([0.9, 0.97, 0.95])),
        "baseline": ([0.25, 0.5, 1.0], [0.8, 0.9, 0.96]),
    }
    P.metric_vs_x(series, "width", "accuracy", path)
    first = path.stat().st_size
    P.metric_vs_x(series, "FLOPs (= 2 x MACs)", "accuracy", path, logx=True, title="again")
    _assert_image(path, tmp_path)
    assert first > 0
    assert sorted(p.name for p in path.parent.iterdir()) == ["acc.png"]


def test_keep_prob_plot(tmp_path):
    keep = {f"layer{i}": torch.linspace(1.0, 0.1 * i, 4 + i) for i in range(4)}
    out = P.keep_prob_plot(keep, tmp_path / "keep.png")
    _assert_image(out, tmp_path)


def test_failed_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        P.metric_vs_x({"a": ([0, 1], [0, 1])}, "x", "y", tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "call",
    [
        lambda d: P.metric_vs_x({}, "x", "y", d / "a.png"),
        lambda d: P.metric_vs_x({"a": ([0, 1], [0])}, "x", "y", d / "a.png"),
        lambda d: P.metric_vs_x({"a": ([0, 1], [0, 1])}, "x", "y", d / "a.pdf"),
        lambda d: P.keep_prob_plot({}, d / "k.png"),
        lambda d: P.keep_prob_plot({"fc": torch.ones(2, 2)}, d / "k.png"),
        lambda d: P.reliability_diagram({"counts": [1]}, d / "r.png"),
    ],
)
def test_bad_inputs_raise(tmp_path, call):
    with pytest.raises(ValueError):
        call(tmp_path)
