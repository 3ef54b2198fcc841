"""The safe way to share a width (issue 18, item 7): tensors plus a plain-data spec, read with
``weights_only`` and rebuilt from our own code; a file holding pickled code is refused unrun."""

from __future__ import annotations

import os

import pytest
import torch

from bnn_nested.config import build_config
from bnn_nested.deploy.serialize import (
    UnsafeOrInvalidWeights,
    load_width_weights,
    save_width_weights,
)
from bnn_nested.models import build_model
from bnn_nested.training.samplers import build_sampler
from tests.trained_runs import TINY


def _model(**model):
    cfg = build_config({**TINY, "model": {**TINY["model"], **model}})
    torch.manual_seed(1)
    net = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), (64,), 10)
    with torch.no_grad():  # batch-norm statistics that are not the defaults
        net.train()
        net(torch.randn(32, 64), width=0.5)
    return cfg, net.eval()


@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("width", [0.5, 1.0])
def test_round_trip_computes_the_nested_model_at_that_width(tmp_path, norm, width):
    cfg, net = _model(norm=norm)
    x = torch.randn(8, 64)
    path = save_width_weights(net, cfg, width, x[:2], tmp_path / "w.pt")
    loaded = load_width_weights(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x, width=width), atol=1e-5, rtol=1e-5)
    # the file holds tensors and plain values only
    blob = torch.load(path, weights_only=True)
    assert blob["spec"]["width"] == width and blob["spec"]["config"]["model"]["norm"] == norm


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_file_holding_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"format": "bnn-nested-width-weights/1", "spec": _Payload(str(marker))}, path)
    with pytest.raises(UnsafeOrInvalidWeights, match="holds code"):
        load_width_weights(path)
    assert not marker.exists()


def test_an_import_config_is_refused_unless_allowed(tmp_path):
    cfg, net = _model()
    path = save_width_weights(net, cfg, 0.5, torch.randn(2, 64), tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    blob["spec"]["config"]["model"].update(name="import", target="os:getcwd", hidden=[16])
    torch.save(blob, path)
    with pytest.raises(UnsafeOrInvalidWeights, match="model.name: import"):
        load_width_weights(path)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda b: b.update(format="other"), "not a width-weights file"),
        (lambda b: b["spec"].update(width=3.0), "malformed spec"),
        (lambda b: b["spec"].pop("input_shape"), "malformed spec"),
        (lambda b: b["spec"].update(width=1.0), "do not match"),
        (lambda b: b["state"].popitem(), "do not match"),
    ],
)
def test_malformed_files_are_one_line_errors(tmp_path, edit, needle):
    cfg, net = _model()
    path = save_width_weights(net, cfg, 0.5, torch.randn(2, 64), tmp_path / "w.pt")
    blob = torch.load(path, weights_only=True)
    edit(blob)
    torch.save(blob, path)
    with pytest.raises(UnsafeOrInvalidWeights, match=needle) as info:
        load_width_weights(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)
