"""Checkpoints: atomic writes, RNG round trips, one-line errors for bad files (never modified),
and numerical faults (NaN/Inf loss stops training, last good checkpoint kept; gradient clipping)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.cli.main import main
from bnn_nested.config import build_config
from bnn_nested.training import checkpoint as ckpt
from bnn_nested.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import NonFiniteLossError, Trainer
from tests.zoo import mlp

TRAIN = [
    "train",
    "--config",
    "configs/digits_mlp.yaml",
    "--quiet",
    "--set",
    "model.hidden=[16]",
    "--set",
    "model.groups=4",
    "--set",
    "train.epochs=3",
    "--set",
    "train.checkpoint_every=1",
]


ROOT = Path(__file__).parents[2]


@pytest.fixture
def repo(monkeypatch):
    monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def _unfinished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    run = tmp / "run"
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(TRAIN + ["--out", str(run), "--set", "train.epochs=1"]) == 0
    finally:
        os.chdir(cwd)
    state = load_checkpoint(run / "checkpoint.pt")
    state.pop("format_version")
    state["complete"] = False
    state["config"]["train"]["epochs"] = 3
    save_checkpoint(run / "checkpoint.pt", state)
    return run


@pytest.fixture
def unfinished_run(_unfinished, tmp_path):
    """A copy of a real run directory whose checkpoint is mid-training (epoch 1 of 3)."""
    return Path(shutil.copytree(_unfinished, tmp_path / "run"))


def test_rng_state_round_trip():
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = capture_rng_state()
    first = (torch.rand(3), random.random(), np.random.standard_normal(2))
    restore_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.standard_normal(2))
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert np.array_equal(first[2], second[2])


def test_checkpoint_loads_with_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"x": torch.arange(3), "rng": capture_rng_state()})
    state = torch.load(path, weights_only=True)
    assert (
        torch.equal(state["x"], torch.arange(3)) and state["format_version"] == ckpt.FORMAT_VERSION
    )


def test_failed_write_leaves_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"x": torch.zeros(2)})
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.ones(2)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def _truncate(b: bytes) -> bytes:
    return b[: len(b) // 2]


def _garbage(b: bytes) -> bytes:
    return b"\x00not a checkpoint" * 10


def _flip_middle(b: bytes) -> bytes:
    mid = len(b) // 2
    return b[:mid] + bytes(x ^ 0xFF for x in b[mid : mid + 64]) + b[mid + 64 :]


@pytest.mark.parametrize("damage", [_truncate, _garbage, _flip_middle, lambda b: b""])
def test_corrupt_checkpoint_one_line_error_file_untouched(unfinished_run, damage, capsys):
    path = unfinished_run / "checkpoint.pt"
    path.write_bytes(damage(path.read_bytes()))
    before = path.read_bytes()
    assert main(["train", "--resume", str(unfinished_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0]
    assert "corrupt" in err[0] or "incompatible" in err[0]
    assert path.read_bytes() == before
    ours = (".bnn-nested-run", ".bnn-nested.lock")  # the run's marker and lock file
    assert sorted(p.name for p in unfinished_run.iterdir() if p.name not in ours) == [
        "checkpoint.pt",
        "config.yaml",
        "history.json",
        "keep_probs.json",
        "keep_probs.png",
        "ordering.md",
    ]


def _edit(run, fn):
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    fn(state)
    torch.save(state, path)  # bypass save_checkpoint to write odd contents
    return path


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda s: s.update(format_version=99), "format 99 is not supported"),
        (lambda s: s.update(format_version=1), "format 1 holds a hand-nested model"),
        (lambda s: s.pop("format_version"), "not a bnn_nested checkpoint"),
        (lambda s: s.pop("rng"), "missing rng"),
        (lambda s: s["model"].update({"features.0.weight": torch.zeros(3, 3)}), "incompatible"),
        (lambda s: s["config"]["model"].update(hiden=[3]), "incompatible"),
    ],
)
def test_incompatible_checkpoint_one_line_error(unfinished_run, edit, needle, capsys):
    path = _edit(unfinished_run, edit)
    before = path.read_bytes()
    assert main(["train", "--resume", str(unfinished_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and needle in err[0], err
    assert path.read_bytes() == before


def test_missing_checkpoint_and_missing_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


# -- numerical faults --------------------------------------------------------------------------
def test_nan_loss_stops_naming_step_and_keeps_last_good_checkpoint(
    tmp_path, repo, monkeypatch, capsys
):
    real_step = Trainer.train_step

    def poisoned(self, x, y):
        if self.step == 25:  # epoch 2 (digits: 19 batches of 64 per epoch)
            x = x * float("nan")
        return real_step(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    run = tmp_path / "run"
    assert main(TRAIN + ["--out", str(run)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "loss became nan at step 25 (epoch 2, batch 7)" in err[0]
    assert f"last good checkpoint: {run / 'checkpoint.pt'} (step 19), kept" in err[0]
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 19 and state["epoch"] == 1 and not state["complete"]
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def _tiny_trainer(**train):
    cfg = build_config(
        {
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "train": {"optimizer": "sgd", "lr": 0.1, **train},
        }
    )
    model = mlp(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
    return Trainer(model, cfg, n_train=32, quiet=True)


def test_nan_in_train_step_leaves_parameters_untouched():
    tr = _tiny_trainer()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    x = torch.randn(8, 6)
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="at step 0"):
        tr.train_step(x, torch.zeros(8, dtype=torch.long))
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_grad_clip_bounds_the_gradient_norm():
    """With ``train.grad_clip = c`` the global gradient norm reaching the optimizer is <= c, and
    it was larger without clipping (so the test can fail)."""
    x, y = torch.randn(16, 6) * 50, torch.randint(0, 3, (16,))
    norms = {}
    for clip in (None, 0.01):
        torch.manual_seed(0)
        tr = _tiny_trainer(grad_clip=clip)
        real_step = tr.optimizer.step

        def step(*a, _tr=tr, _clip=clip, _real=real_step, **k):
            g = torch.cat([p.grad.flatten() for p in _tr.model.parameters() if p.grad is not None])
            norms[_clip] = float(g.norm())
            return _real(*a, **k)

        tr.optimizer.step = step
        tr.train_step(x, y)
    assert norms[None] > 0.1
    assert norms[0.01] == pytest.approx(0.01, rel=1e-4)


def test_fit_with_plain_loader_still_works():
    """Backward compatibility: Trainer.fit on an ordinary shuffled DataLoader, no checkpointer."""
    tr = _tiny_trainer(epochs=2)
    data = TensorDataset(torch.randn(32, 6), torch.randint(0, 3, (32,)))
    hist = tr.fit(DataLoader(data, batch_size=8, shuffle=True))
    assert len(hist) == 2 and tr.step == 8 and tr.last_checkpoint is None
