"""Smoke and bookkeeping checks for ``benchmarks/width_recovery.py`` (issue 25); no assertions on
what the students learn."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "width_recovery.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_width_recovery", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


wr = _load()


def test_teacher_data_is_deterministic_per_seed():
    a = wr.teacher_data((8, 4), seed=3, n_train=50, n_test=20)
    b = wr.teacher_data((8, 4), seed=3, n_train=50, n_test=20)
    c = wr.teacher_data((8, 4), seed=4, n_train=50, n_test=20)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], c[0])
    x, y, xt, yt = a
    assert x.shape == (50, wr.IN_FEATURES) and xt.shape == (20, wr.IN_FEATURES)
    assert set(y.tolist()) <= set(range(wr.NUM_CLASSES))
    assert not torch.equal(x[:20], xt)  # the test set is a fresh draw


def test_teacher_labels_are_balanced_and_depend_on_its_units():
    t = wr.Teacher((8, 2), seed=0, noise=0.0)
    x, y = t.sample(4000)
    assert abs(float(y.float().mean()) - 0.5) < 0.05  # median threshold
    # inputs orthogonal to every teacher direction do not change the score
    x0 = torch.randn(16, wr.IN_FEATURES)
    ortho = torch.randn(16, wr.IN_FEATURES)
    ortho = ortho - (ortho @ t.u.T) @ t.u
    torch.testing.assert_close(t._score(x0 + ortho), t._score(x0), rtol=1e-4, atol=1e-4)


def test_needed_verdict_on_a_tiny_case():
    acc = {"half_l1": 0.80, "half_l2": 0.86, "teacher": 0.90, "double": 0.905}
    v = wr.needed_verdict(acc, beat=0.02, tie=0.01)
    assert v["gain_over_half_l1"] == pytest.approx(0.10)
    assert v["gain_over_half_l2"] == pytest.approx(0.04)
    assert v["gain_of_double"] == pytest.approx(0.005)
    assert v["l1_needed"] and v["l2_needed"] and v["wider_no_better"] and v["needed"]
    # the halved second layer is as good: that layer's width is not needed
    v = wr.needed_verdict({**acc, "half_l2": 0.895}, beat=0.02, tie=0.01)
    assert v["l1_needed"] and not v["l2_needed"] and not v["needed"]
    # twice the width is clearly better: the teacher's width is not enough
    v = wr.needed_verdict({**acc, "double": 0.93}, beat=0.02, tie=0.01)
    assert not v["wider_no_better"] and not v["needed"]
    assert wr.plain_variants((8, 4)) == {
        "half_l1": (4, 4),
        "half_l2": (8, 2),
        "teacher": (8, 4),
        "double": (16, 8),
    }


def test_last_change_and_overrides():
    assert wr.last_change([5.0, 4.0, 3.5, 3.4, 3.4, 3.3, 3.3], last=5) == pytest.approx(0.5)
    assert wr.last_change([5.0, 4.0, 3.5, 3.4, 3.4, 3.3, 3.3], last=3) == pytest.approx(0.1)
    drifting = [5.0, 4.9, 4.8, 4.7, 4.6, 4.5]
    assert wr.net_change(drifting) == pytest.approx(0.1)
    assert wr.steady(wr.last_change(drifting), wr.net_change(drifting), 0.02)
    jitter = [5.0, 5.1, 5.0, 5.1, 5.0, 5.1]
    assert wr.net_change(jitter) == pytest.approx(0.02)
    assert not wr.steady(wr.last_change(jitter), wr.net_change(jitter), 0.02)
    over = wr.student_overrides(
        "vou",
        ["ordering.lr=0.01", "nested_dropout:ordering.prior_pi=0.9", "vou:train.lr=0.002"],
        1,
        7,
    )
    assert "ordering.sampler=vou" in over and "seed=1" in over and "train.epochs=7" in over
    assert over[-2:] == ["ordering.lr=0.01", "train.lr=0.002"]
    assert not any("prior_pi" in o for o in over)


def test_quick_run_writes_tables(tmp_path):
    res = wr.main(["--quick", "--out", str(tmp_path)])
    md = (tmp_path / "width_recovery.md").read_text()
    saved = json.loads((tmp_path / "width_recovery.json").read_text())
    assert "Needed width" in md and "Recovery per run" in md
    assert len(saved["students"]) == len(wr.TEACHERS) * 2  # 1 seed, vou and nested_dropout
    for r in res["students"]:
        assert len(r["expected_groups"]) == 2
        assert all(len(h) == 6 + 1 for h in r["history_groups"].values())  # initial + 6 epochs
        assert len(r["history_log_alpha"]) == 3  # two hidden layers and the classifier
        assert 0.0 <= r["test_acc"] <= 1.0
    assert set(res["needed"]) == {t.name for t in wr.TEACHERS}
    again = wr.main(["--from-json", str(tmp_path / "width_recovery.json")])
    assert again["students"] == saved["students"]
