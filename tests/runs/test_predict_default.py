"""``LoadedRun.predict`` and ``Pretrained.predict`` share one rule for the number of Monte-Carlo
samples drawn by default (issue 27 item 2): the count the width's stored temperature was fitted
with, else the config's ``eval.samples``. Checked on the sample dimension of what they return."""

from __future__ import annotations

import warnings

import pytest
import torch

from bnn_nested.evaluation.calibration import Temperature, TemperatureFit, save_temperatures
from bnn_nested.runs.loaded import load_run
from bnn_nested.runs.pretrained import from_pretrained, from_run
from tests.trained_runs import copy_run, train_tiny, write_config

EVAL_SAMPLES = 2


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A tiny trained run whose config says ``eval.samples: 2``; no temperatures stored."""
    root = tmp_path_factory.mktemp("predict")
    cfg = write_config(root / "c.yaml", eval={"widths": [0.5, 1.0], "samples": EVAL_SAMPLES})
    assert train_tiny(root / "run", cfg=cfg) == 0
    return root / "run"


def _store_temperature(run, width: float, samples: int) -> None:
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    fit = TemperatureFit(Temperature(1.5, "per_sample", samples), 1.0, 0.9)
    save_temperatures(run, {width: fit}, step, samples=samples)


def _inputs(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 64)


def test_a_run_predicts_with_the_sample_count_its_temperature_was_fitted_with(template, tmp_path):
    run = copy_run(template, tmp_path / "run")
    _store_temperature(run, 0.5, samples=3)
    x = _inputs()
    for model in (load_run(run), from_run(run)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the temperature is applied at its own sample count
            assert model.predict(x, 0.5).shape == (3, 4, 10), type(model).__name__
        assert model.predict(x, 1.0).shape == (EVAL_SAMPLES, 4, 10)  # no temperature at 1.0
        assert model.predict(x, 0.5, calibrated=False).shape == (EVAL_SAMPLES, 4, 10)
        assert model.predict(x, 0.5, samples=5, calibrated=False).shape == (5, 4, 10)


def test_without_temperatures_both_predict_with_eval_samples(template, tmp_path):
    x = _inputs()
    shared = from_run(template).save_pretrained(tmp_path / "shared")
    for model in (from_run(template), from_pretrained(shared), load_run(template)):
        assert model.predict(x, 0.5).shape == (EVAL_SAMPLES, 4, 10), type(model).__name__
        assert model.temperature(0.5) == 1.0  # none stored


def test_a_temperature_of_unknown_sample_count_predicts_with_eval_samples(template):
    pre = from_run(template)
    pre.temperatures = {0.5: Temperature(1.5, "per_sample", None)}
    assert pre.predict(_inputs(), 0.5).shape == (EVAL_SAMPLES, 4, 10)
