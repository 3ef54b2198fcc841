"""Cost profiles: analytic FLOPs and parameter counts, latency statistics, the JSON cache."""

import json

import pytest
import torch
from torch import nn

from bnn_nested.cost import count_flops, count_params
from bnn_nested.deploy.profile import PROFILE_FILE, profile_widths
from bnn_nested.deploy.timing import _quantile, measure_latency
from bnn_nested.nest import nestify
from tests.deploy.helpers import mlp

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")


def test_flops_of_sliced_linear_and_conv_match_formula():
    # linear 10 -> 16 outputs in 8 groups, F=0, then 16 -> 1; width 0.5 keeps 4 groups = 8 outputs
    x = torch.zeros(3, 10)
    lin = nestify(
        nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1)), x, groups=8, kept=0
    )
    assert count_flops(lin, x, 0.5) == 2 * 3 * (10 * 8 + 8 * 1)
    # conv 4 -> 12 channels, 3x3, 6x6 input, padding 1 (MACs = B*H*W*out*in*9), then a 1x1 conv
    # 12 -> 1; width 0.34: F + ceil(0.34 * 3) = 1 + 2 = 3 groups of 3 channels -> 9 channels
    x = torch.zeros(2, 4, 6, 6)
    net = nn.Sequential(nn.Conv2d(4, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 1, 1))
    conv = nestify(net, x, groups=4, kept=1)
    assert count_flops(conv, x, 0.34) == 2 * 2 * 6 * 6 * (9 * 4 * 9 + 1 * 9)
    assert count_params(conv, x[:1], 0.34) == (9 * 4 * 9 + 9) + (9 + 1)


def test_quantile_and_latency_stats():
    xs = [1.0, 2.0, 3.0, 4.0, 10.0]
    assert _quantile(xs, 0.25) == 2.0 and _quantile(xs, 0.75) == 4.0
    assert _quantile([1.0, 2.0], 0.5) == 1.5
    calls = []
    t = measure_latency(lambda x: calls.append(1), torch.zeros(1), warmup=2, repeats=5)
    assert len(calls) == 7 and t.repeats == 5 and t.median_ms >= 0 and t.iqr_ms >= 0
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(lambda x: x, torch.zeros(1), repeats=0)


def test_profile_widths_values_and_cache(tmp_path, monkeypatch):
    model, x = mlp()
    costs = profile_widths(
        model, x[:1], [0.25, 1.0], batch_size=4, threads=1, repeats=3, cache_dir=tmp_path
    )
    assert [c.width for c in costs] == [0.25, 1.0]
    assert costs[0].flops < costs[1].flops and costs[0].params < costs[1].params
    assert costs[1].flops == count_flops(model, x[:1], 1.0)
    assert all(c.latency_ms > 0 and c.batch_size == 4 for c in costs)
    cache = json.loads((tmp_path / PROFILE_FILE).read_text())
    assert len(cache) == 1
    # a second call with the same settings reads the cache (no measurement)
    monkeypatch.setattr(
        "bnn_nested.deploy.profile.measure_latency",
        lambda *a, **k: pytest.fail("should have been cached"),
    )
    again = profile_widths(
        model, x[:1], [0.25, 1.0], batch_size=4, threads=1, repeats=3, cache_dir=tmp_path
    )
    assert again == costs
    masked = profile_widths(model, x[:1], [0.5], latency=False, mode="masked")
    assert masked[0].latency_ms is None
    with pytest.raises(ValueError, match="mode"):
        profile_widths(model, x[:1], [0.5], mode="bogus")
