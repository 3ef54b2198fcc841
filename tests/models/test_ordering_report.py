"""Keep-probability report of a model's ordering units."""

import json

import pytest
import torch

from bnn_nested.evaluation.ordering import ordering_report, write_ordering_report
from tests.zoo import mlp, zoo


def test_report_values_by_hand(tmp_path):
    model = mlp(3, 2, hidden=[6], groups=3, kept=1)  # K = 2
    unit = model.unit("features.0")
    with torch.no_grad():
        unit.r.copy_(torch.tensor([0.0, 0.0]))  # beta = 0.5, 0.5 -> P(b>=1)=0.5, P(b>=2)=0.25
    rep = ordering_report(model)
    (name,) = rep
    assert rep[name]["keep_probs"] == pytest.approx([0.5, 0.25])
    assert rep[name]["expected_groups"] == pytest.approx(1.75)
    assert rep[name]["expected_channels"] == pytest.approx(3.5)  # 2 channels per group
    assert rep[name]["prior_keep_probs"] == pytest.approx([0.95, 0.95**2], rel=1e-5)
    paths = write_ordering_report(model, tmp_path / "rep")
    assert json.loads(paths["json"].read_text())[name]["keep_probs"] == pytest.approx([0.5, 0.25])
    assert "| features.0 |" in paths["markdown"].read_text()
    assert paths["plot"].stat().st_size > 1000


def test_report_covers_every_ordered_layer_and_rejects_unordered_models():
    lenet = zoo("lenet", (1, 8, 8), 3, hidden=[4, 8, 8], groups=4, kept=1)
    assert list(ordering_report(lenet)) == ["conv2.0", "fc.0"]
    plain = zoo(
        "lenet",
        (1, 8, 8),
        3,
        hidden=[4, 8, 8],
        groups=4,
        order_classifier_input=False,
        exclude=["conv2.0"],
    )
    with pytest.raises(ValueError, match="no ordering units"):
        ordering_report(plain)
