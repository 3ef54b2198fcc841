"""Smoke and math checks for ``benchmarks/norms.py`` (the norm-control benchmark)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "norms.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_norms", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


norms = _load()


def test_input_gradient_matches_closed_form_of_softmax_regression():
    # CE(Wx + b, y) has d/dx = W^T (softmax(Wx + b) - onehot(y)), per example.
    lin = nn.Linear(5, 3)
    x, y = torch.randn(4, 5), torch.tensor([0, 2, 1, 2])
    g = norms.input_gradients(lin, x, y)
    with torch.no_grad():
        expected = (F.softmax(lin(x), -1) - F.one_hot(y, 3).float()) @ lin.weight
    torch.testing.assert_close(g, expected, rtol=1e-5, atol=1e-6)
    out = norms.robustness(lin, x, y, eps=0.5, lo=-10.0, hi=10.0)
    assert out["grad_norm"] == pytest.approx(float(expected.norm(dim=1).mean()), rel=1e-5)
    x_adv = x + 0.5 * expected.sign()
    acc = float((lin(x_adv).argmax(-1) == y).float().mean())
    assert out["fgsm_acc"] == pytest.approx(acc)


@pytest.mark.slow
def test_main_quick_runs_and_reports_every_method():
    methods = ["none", "wrs", "fixnorm", "invariant"]
    res = norms.main(
        [
            "--quick",
            "--subset",
            "64",
            "--test-subset",
            "32",
            "--batch-size",
            "32",
            "--methods",
            *methods,
            "--optimizers",
            "sgd",
            "--timing-steps",
            "1",
            "--timing-rounds",
            "1",
        ]
    )
    assert res["n_train"] == 64 and res["n_test"] == 32 and res["epochs"] == 1
    assert [r["method"] for r in res["runs"]] == methods
    for r in res["runs"]:
        assert set(r["acc"]) == {"0.25", "0.5", "1"}
        assert all(0.0 <= a <= 1.0 for a in r["acc"].values())
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert 0.0 <= r["fgsm_acc"] <= 1.0
    wrs = next(r for r in res["runs"] if r["method"] == "wrs")
    assert wrs["targets"] == ["net.conv1", "net.conv2"]  # conv -> BN pairs, not the classifier
    assert wrs["conv_filter_norm"]["conv2"] == pytest.approx(1.0, abs=1e-5)
    fix = next(r for r in res["runs"] if r["method"] == "fixnorm")
    assert fix["classifier_norm"] == pytest.approx(math.sqrt(10), rel=1e-5)  # 10 rows of norm 1
    assert res["overhead"]["sgd"]["none"] > 0
    for m in methods:
        assert f"| {m} |" in res["markdown"]
