"""Smoke and math checks for ``benchmarks/bayes_cost.py`` (the Bayesian layer cost benchmark)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bnn_nested.nn.bayes import lrt_conv2d_moments

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bayes_cost.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchmark_bayes_cost", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bayes_cost = _load()


def test_reference_conv_has_the_lrt_moments():
    """The re-implemented reference layer (no mask) samples N(conv(x, W), conv(x^2, alpha W^2))."""
    torch.manual_seed(0)
    ref = bayes_cost.RefConv2dVND(nn.Conv2d(2, 4, 3, padding=1, bias=False), 2, 1, masked=False)
    with torch.no_grad():
        ref.log_alp.uniform_(-2.0, 0.0)
    x = torch.randn(1, 2, 3, 3)
    n = 8_000
    with torch.no_grad():
        out = ref(x.expand(n, 2, 3, 3))
    mean, var = lrt_conv2d_moments(x, ref.weight, ref.log_alp, None, 1, 1, 1)
    se = (var / n).sqrt()
    assert torch.all((out.mean(0) - mean[0]).abs() < 5 * se[0] + 1e-4)
    torch.testing.assert_close(out.var(0), var[0].detach(), rtol=0.08, atol=1e-4)


def test_reference_mask_keeps_whole_groups_and_the_frozen_ones():
    torch.manual_seed(1)
    ref = bayes_cost.RefConv2dVND(nn.Conv2d(1, 8, 1, bias=False), 4, 1, masked=True)
    with torch.no_grad():
        ref.log_alp.fill_(-20.0)
        ref.weight.fill_(1.0)
    for _ in range(20):
        keep = ref(torch.ones(1, 1, 1, 1)).flatten().round()
        groups = keep.view(4, 2)
        assert torch.all(groups[:, 0] == groups[:, 1])  # whole groups
        assert groups[0, 0] == 1  # the kept group
        assert torch.all(groups[1:, 0] <= groups[:-1, 0])  # a prefix is kept


def test_fused_context_restores_the_two_convolution_path():
    import bnn_nested.nn.nested as nested_mod

    before = nested_mod.lrt_conv2d
    with bayes_cost.fused_lrt():
        assert nested_mod.lrt_conv2d is not before
    assert nested_mod.lrt_conv2d is before


def test_quick_run_prints_every_variant():
    out = bayes_cost.main(["--archs", "lenet", "--batches", "4", "--predict-batch", "4", "--quick"])
    for name in ("| point |", "| lrt |", "| lrt fused |", "| shared |", "| reference |"):
        assert name in out
    assert "| lenet | 4 |" in out


def test_reference_linear_is_mean_plus_bias_without_noise():
    lin = bayes_cost.RefLinearVDO(nn.Linear(3, 2))
    with torch.no_grad():
        lin.log_alp.fill_(-40.0)
    x = torch.randn(5, 3)
    torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), atol=1e-3, rtol=0)
