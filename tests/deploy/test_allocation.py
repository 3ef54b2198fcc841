"""Per-layer allocation by keep-probability threshold; Pareto front."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.deploy.allocation import (
    AllocationPoint,
    pareto_front,
    plot_sweep,
    sweep,
    threshold_allocation,
)
from bnn_nested.nest import sliced_network
from tests.deploy.helpers import cnn
from tests.zoo import zoo

pytestmark = pytest.mark.filterwarnings("ignore:batch norm. no statistics calibrated")


def _set_keep(unit, beta):
    """Set continuation probabilities so keep probs are cumulative products of ``beta``."""
    b = torch.tensor(beta)
    with torch.no_grad():
        unit.r.copy_(torch.log(b) - torch.log1p(-b))


def test_threshold_counts_hand_case():
    model, x = cnn()  # groups 4, kept 1 -> K = 3 ordered groups per dimension
    assert model.dims() == ["c1", "c2"]
    _set_keep(model.unit("c1"), [0.9, 0.5, 0.5])  # keep probs 0.9, 0.45, 0.225
    _set_keep(model.unit("c2"), [0.99, 0.99, 0.99])  # 0.99, 0.98, 0.97
    assert threshold_allocation(model, 0.95) == {"c1": 1, "c2": 4}
    assert threshold_allocation(model, 0.4) == {"c1": 3, "c2": 4}
    assert threshold_allocation(model, 0.0) == {"c1": 4, "c2": 4}
    assert threshold_allocation(model, 1.01) == {"c1": 1, "c2": 1}
    net = sliced_network(model, threshold_allocation(model, 0.4), x[:2])  # the allocation applied
    assert net.c1.out_channels == 3 * 2 and net.c2.out_channels == 16


def test_pareto_front():
    pts = [
        AllocationPoint(str(i), 1.0, f, {"cls/acc": a})
        for i, (f, a) in enumerate([(10, 0.5), (20, 0.4), (30, 0.8), (30, 0.7), (40, 0.8)])
    ]
    assert [p.label for p in pareto_front(pts)] == ["0", "2"]


def test_sweep_and_plot(tmp_path):
    model, x = cnn()
    loader = DataLoader(TensorDataset(x, torch.randint(0, 3, (len(x),))), batch_size=8)
    allocated, uniform = sweep(model, loader, x, [0.0, 0.5, 0.99, 2.0], [0.5, 1.0])
    assert len(uniform) == 2 and uniform[0].flops < uniform[1].flops
    assert allocated[0].flops == uniform[1].flops  # t = 0 keeps everything
    assert plot_sweep(allocated, uniform, tmp_path / "p.png").is_file()


def test_resnet_allocation_cuts_main_branch_and_shortcut_together():
    """Regression (hand-nested models): the allocation was keyed by the last layer paired with a
    unit, so the shortcut was cut while ``conv2`` kept all its channels. A residual stream is one
    dimension: its allocation cuts every block's main branch and the shortcut alike."""
    torch.manual_seed(0)
    model = zoo("resnet", (3, 8, 8), 10, variant="20", groups=16, kept=2, norm="batch").eval()
    stream = "blocks.3.conv2"  # stage 2: blocks 3-5 and the shortcut of block 3 (32 channels)
    with torch.no_grad():  # a unit whose keep probabilities fall fast
        model.unit(stream).r.fill_(-3.0)
    alloc = threshold_allocation(model, 0.97)
    assert alloc[stream] < 16
    net = sliced_network(model, alloc, torch.randn(2, 3, 8, 8))
    outs = [net.blocks[i].conv2.out_channels for i in (3, 4, 5)] + [
        net.blocks[3].shortcut[0].out_channels
    ]
    assert outs == [alloc[stream] * 2] * 4
