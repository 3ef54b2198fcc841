"""``train.log: tensorboard``: a run writes event files under ``RUN/tensorboard/`` holding the
loss, the ELBO terms, the temperature, the learning rate, per-width validation accuracy and the
keep probabilities (read back with TensorBoard's own ``EventAccumulator``); off by default."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from bnn_nested.cli.main import main
from bnn_nested.config import build_config
from bnn_nested.runs.run import train_run
from bnn_nested.training import tensorboard as tb

needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None,
    reason="tensorboard is not installed (pip install 'bnn-nested[tensorboard]')",
)

EPOCHS = 2
WIDTHS = [0.5, 1.0]


def _cfg(log: str = "tensorboard"):
    return build_config(
        {
            "seed": 1,
            "data": {"name": "digits", "batch_size": 128},
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "ordering": {
                "sampler": "vou",
                "schedule": "exponential",
                "temperature": 1.0,
                "anneal_rate": 0.5,
                "temperature_min": 0.1,
            },
            "train": {"epochs": EPOCHS, "lr": 0.01, "scheduler": "cosine", "log": log},
            "eval": {"widths": WIDTHS},
        }
    )


@needs_tensorboard
def test_event_files_hold_the_listed_tags(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(1)
    run = train_run(_cfg(), tmp_path / "run", quiet=True)
    acc = EventAccumulator(str(run / tb.LOG_DIR), size_guidance={"histograms": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {
        "train/loss",
        "train/data_nll",
        "train/kl_over_n",
        "train/penalty",
        "ordering/temperature",
        "opt/lr/weights",
        "opt/lr/ordering",
        "val/acc",
        *(f"val/acc/w{w:g}" for w in WIDTHS),
    }
    assert scalars <= set(tags["scalars"])
    for tag in scalars:
        assert [e.step for e in acc.Scalars(tag)] == list(range(1, EPOCHS + 1)), tag
    # the values are the run's: loss and val_acc as in history.json, the schedules' values
    history = json.loads((run / "history.json").read_text())
    for tag, key in (("train/loss", "loss"), ("val/acc", "val_acc")):
        got = [e.value for e in acc.Scalars(tag)]
        assert got == pytest.approx([h[key] for h in history], rel=1e-6)
    temps = [e.value for e in acc.Scalars("ordering/temperature")]
    assert temps == pytest.approx([1.0, 1.0 * 2.718281828**-0.5], rel=1e-6)
    lrs = [e.value for e in acc.Scalars("opt/lr/weights")]
    assert lrs == pytest.approx([0.01, 0.005], rel=1e-6)  # cosine over 2 epochs: lr/2 in epoch 2
    assert acc.Scalars("val/acc/w1")[-1].value == pytest.approx(history[-1]["val_acc"], rel=1e-6)
    # keep probabilities: one histogram per ordering unit, and the image
    units = [t for t in tags["histograms"] if t.startswith("keep_probs/")]
    assert len(units) == 1  # mlp([16]): one ordering unit
    assert [e.step for e in acc.Histograms(units[0])] == list(range(1, EPOCHS + 1))
    assert [e.step for e in acc.Images("keep_probs")] == list(range(1, EPOCHS + 1))


def test_off_by_default(tmp_path):
    assert build_config({}).train.log == "none"


def test_bad_value_and_missing_package_are_one_line_errors(tmp_path, capsys, monkeypatch):
    out, cfg = tmp_path / "run", tmp_path / "cfg.yaml"
    cfg.write_text("seed: 0\n")
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--set", "train.log=wandb"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not out.exists()
    assert len(err.splitlines()) == 1 and "train.log" in err and "tensorboard" in err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ValueError, match=r"train.log: 'tensorboard' needs the tensorboard package"):
        tb.require_tensorboard()
