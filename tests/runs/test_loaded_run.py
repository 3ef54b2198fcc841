"""LoadedRun: batch-norm re-estimation follows the model's device."""

from __future__ import annotations

import torch

import bnn_nested.runs.batchnorm as batchnorm_mod
from bnn_nested.nn.utils import module_device
from bnn_nested.runs.loaded import load_run
from tests.trained_runs import train_tiny, write_config


def test_recalibrate_bn_runs_on_the_models_device(tmp_path, monkeypatch):
    cfg = write_config(
        tmp_path / "c.yaml", model={"name": "mlp", "hidden": [16], "groups": 4, "norm": "batch"}
    )
    assert train_tiny(tmp_path / "run", cfg=cfg) == 0
    loaded = load_run(tmp_path / "run")
    seen = {}
    real = batchnorm_mod.recalibrate_bn

    def spy(model, loader, widths, num_batches=None, device=None, stochastic=False):
        seen["device"] = torch.device(device) if device is not None else module_device(model)
        seen["model"] = module_device(model)
        return real(model, loader, widths, num_batches, device, stochastic)

    monkeypatch.setattr(batchnorm_mod, "recalibrate_bn", spy)
    # a fake move: the model reports another device, as after ``model.to("cuda")``
    monkeypatch.setattr(
        batchnorm_mod, "module_device", lambda m: torch.device("meta"), raising=False
    )
    loaded.model.to("meta")
    try:
        loaded.recalibrate_bn([0.75])
    except Exception:  # the meta device computes nothing; only the device choice matters here
        pass
    assert seen["model"] == torch.device("meta")
    assert seen["device"] == seen["model"], "BN statistics must be re-estimated where the model is"
