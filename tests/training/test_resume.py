"""Exact resume: a run killed with SIGKILL (or stopped with SIGINT) and resumed with
``bnn-nested train --resume`` ends with exactly the weights of an uninterrupted run (CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from bnn_nested.cli.main import main

ROOT = Path(__file__).parents[2]
EPOCHS = 4
CONFIG = {
    "seed": 3,
    "data": {"name": "digits", "batch_size": 64},
    "model": {"hidden": [32], "groups": 8, "kept": 1},
    "ordering": {
        "sampler": "vou",
        "temperature": 1.0,
        "schedule": "exponential",
        "temperature_min": 0.5,
        "anneal_rate": 0.3,
    },
    "train": {
        "epochs": EPOCHS,
        "optimizer": "adam",
        "lr": 0.003,
        "scheduler": "cosine",
        "checkpoint_every": 1,
        "checkpoint_every_steps": 7,
    },
}

# A child that runs the real CLI, slowed down (20 ms per step) so the parent can signal it mid-run.
CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    from bnn_nested.training.trainer import Trainer
    step = Trainer.train_step
    def slow(self, x, y):
        time.sleep(0.02)
        return step(self, x, y)
    Trainer.train_step = slow
    from bnn_nested.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _final(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Config file and the uninterrupted reference run (in-process, one thread like the child)."""
    tmp = tmp_path_factory.mktemp("resume")
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--config", str(cfg), "--out", str(tmp / "ref"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return cfg, _final(tmp / "ref")


def _run_and_signal(cfg: Path, run: Path, sig: int) -> subprocess.CompletedProcess:
    """Start training in a child; send ``sig`` as soon as its first checkpoint exists."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "train", "--config", str(cfg), "--out", str(run), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    with proc:  # on any failure below, the child is killed and its pipes closed
        try:
            deadline = time.monotonic() + 180  # generous: a loaded 2-core machine is slow
            while not (run / "checkpoint.pt").exists():
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "no checkpoint within 180 s"
                time.sleep(0.005)
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _resume(run: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--resume", str(run), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == EPOCHS
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(setup, tmp_path):
    cfg, ref = setup
    run = tmp_path / "killed"
    res = _run_and_signal(cfg, run, signal.SIGKILL)
    assert res.returncode == -signal.SIGKILL
    partial = _final(run)
    assert not partial["complete"] and partial["step"] < ref["step"]  # really killed mid-run
    assert not (run / "history.json").exists()
    _resume(run)
    _assert_same_weights(_final(run), ref)


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_exits_cleanly(setup, tmp_path):
    cfg, ref = setup
    run = tmp_path / "interrupted"
    res = _run_and_signal(cfg, run, signal.SIGINT)
    assert res.returncode == 130
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "interrupted after step" in lines[0] and f"--resume {run}" in lines[0]
    saved = _final(run)
    assert not saved["complete"] and 0 < saved["step"] < ref["step"]
    _resume(run)
    _assert_same_weights(_final(run), ref)


@pytest.mark.slow
def test_resume_of_a_finished_run_is_refused(setup, tmp_path, capsys):
    cfg, _ = setup
    run = tmp_path / "done"
    assert (
        main(
            ["train", "--config", str(cfg), "--out", str(run), "--quiet", "--set", "train.epochs=1"]
        )
        == 0
    )
    before = (run / "checkpoint.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already finished" in err[0]
    assert (run / "checkpoint.pt").read_bytes() == before


def test_resume_rejects_config_options(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path), "--set", "train.epochs=3"]) == 2
    assert "drop --set" in capsys.readouterr().err
