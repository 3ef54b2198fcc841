"""Ctrl-C at any moment leaves a run that ``--resume`` completes bit-identically (issue 18, item 4):
before the first checkpoint, and during the post-training steps (BN calibration, final save);
under torchrun one message (rank 0) with a resume hint naming the number of processes. Also the
NaN-weights and disk-full parts of items 6 and 8.

The interrupt is raised as KeyboardInterrupt where SIGINT's default handler would raise it (the
SIGINT-mid-epoch path with a real signal is tests/training/test_resume.py).
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

import bnn_nested.runs.run as run_mod
from bnn_nested.cli.main import main
from bnn_nested.training.checkpoint import load_checkpoint, save_checkpoint
from bnn_nested.training.trainer import TrainingInterrupted
from tests.trained_runs import copy_run, train_tiny, write_config

#: Two epochs, batch norm (so calibration changes the weights file), checkpoints every epoch.
SECTIONS = {
    "model": {"norm": "batch"},
    "train": {"epochs": 2, "checkpoint_every": 1},
}


def _final(run) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def _same(a: dict, b: dict) -> None:
    assert a["complete"] and b["complete"]
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"] == 2
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"] == b["history"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("phases")
    cfg = write_config(tmp / "cfg.yaml", **SECTIONS)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_tiny(tmp / "ref", cfg=cfg) == 0
    finally:
        torch.set_num_threads(threads)
    return cfg, tmp / "ref"


def _interrupt_first_call(monkeypatch, name: str) -> None:
    original = getattr(run_mod, name)
    calls = []

    def interrupted(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(run_mod, name, interrupted)


def _resume(run) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", "--resume", str(run), "--quiet"])
    finally:
        torch.set_num_threads(threads)


def _train(cfg, run) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny(run, cfg=cfg)
    finally:
        torch.set_num_threads(threads)


def _interrupt_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.slow
def test_ctrl_c_during_post_training_steps_is_resumable(reference, tmp_path, monkeypatch, capsys):
    cfg, ref = reference
    run = tmp_path / "run"
    _interrupt_first_call(monkeypatch, "recalibrate_bn_widths")
    assert _train(cfg, run) == 130
    line = _interrupt_line(capsys)
    assert f"bnn-nested train --resume {run}" in line
    saved = load_checkpoint(run / "checkpoint.pt")  # the trained state was checkpointed first
    assert saved["epoch"] == 2 and not saved["complete"]
    monkeypatch.undo()
    assert _resume(run) == 0
    _same(_final(run), _final(ref))
    assert (run / "history.json").is_file()


def test_ctrl_c_during_the_final_save_is_resumable(reference, tmp_path, monkeypatch, capsys):
    cfg, ref = reference
    run = tmp_path / "run"
    _interrupt_first_call(monkeypatch, "write_ordering_report")
    assert _train(cfg, run) == 130
    assert "--resume" in _interrupt_line(capsys)
    assert not load_checkpoint(run / "checkpoint.pt")["complete"]
    monkeypatch.undo()
    assert _resume(run) == 0
    _same(_final(run), _final(ref))


def test_ctrl_c_before_the_first_checkpoint_can_be_resumed(
    reference, tmp_path, monkeypatch, capsys
):
    cfg, ref = reference
    run = tmp_path / "run"
    _interrupt_first_call(monkeypatch, "prepare_from_trained")
    assert _train(cfg, run) == 130
    line = _interrupt_line(capsys)
    assert "before the first checkpoint" in line and f"--resume {run}" in line
    assert not (run / "checkpoint.pt").exists()
    monkeypatch.undo()
    assert _resume(run) == 0  # starts over from config.yaml
    _same(_final(run), _final(ref))


def test_killed_before_the_first_checkpoint_can_be_resumed(reference, tmp_path):
    """SIGKILL leaves what the interrupt above leaves (marker + config.yaml), minus the message."""
    cfg, ref = reference
    run = copy_run(ref, tmp_path / "run")
    for name in ("checkpoint.pt", "history.json", "keep_probs.json", "keep_probs.png"):
        (run / name).unlink()
    assert _resume(run) == 0
    _same(_final(run), _final(ref))


def test_resume_hint_names_the_number_of_processes(reference, tmp_path, capsys):
    _, ref = reference
    assert run_mod.resume_command("runs/a", 1) == "bnn-nested train --resume runs/a"
    assert run_mod.resume_command("runs/a", 2) == (
        "torchrun --nproc_per_node=2 -m bnn_nested train --resume runs/a"
    )
    run = copy_run(ref, tmp_path / "run")  # a checkpoint saved mid-epoch by 2 processes
    state = load_checkpoint(run / "checkpoint.pt")
    state.update(complete=False, world_size=2, batch_in_epoch=3, epoch=1)
    save_checkpoint(run / "checkpoint.pt", state)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"torchrun --nproc_per_node=2 -m bnn_nested train --resume {run}" in err


def test_only_rank_zero_reports_an_interrupt(monkeypatch, capsys):
    import bnn_nested.cli.train as train_cmd

    def interrupted(args):
        raise TrainingInterrupted("interrupted after step 3 (epoch 1); resume with: X")

    monkeypatch.setattr(train_cmd, "run", interrupted)
    monkeypatch.setenv("RANK", "1")
    assert main(["train", "--resume", "x"]) == 130
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--resume", "x"]) == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_resume_of_an_all_nan_checkpoint_is_refused(reference, tmp_path, capsys):
    _, ref = reference
    run = copy_run(ref, tmp_path / "run")
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    state["complete"] = False  # at its last epoch: resume would only run the final steps
    state["model"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state["model"].items()
    }
    save_checkpoint(path, state)
    before = path.read_bytes()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "non-finite" in err[0]
    assert path.read_bytes() == before and not load_checkpoint(path)["complete"]


def test_evaluate_names_the_checkpoint_and_the_non_finite_tensors(reference, tmp_path, capsys):
    _, ref = reference
    run = copy_run(ref, tmp_path / "run")
    path = run / "checkpoint.pt"
    state = load_checkpoint(path)
    name = next(k for k, v in state["model"].items() if k.endswith("weight"))
    state["model"][name] = torch.full_like(state["model"][name], float("inf"))
    save_checkpoint(path, state)
    assert main(["evaluate", str(run), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and name in err[0], err
    assert not (run / "report.json").exists()


def test_disk_full_names_the_file_and_the_kept_checkpoint(reference, tmp_path, monkeypatch, capsys):
    cfg, _ = reference
    run = tmp_path / "run"
    real_replace = os.replace
    written = []

    def replace(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            if written:  # the second checkpoint finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
            written.append(dst)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert _train(cfg, run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    kept = load_checkpoint(run / "checkpoint.pt")
    assert str(run / "checkpoint.pt") in err[0] and "No space left" in err[0]
    assert f"(step {kept['step']}) is kept" in err[0]
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# A child running the real CLI; the named step of bnn_nested.runs.run announces itself with a
# file and then waits, so the parent can send a real SIGINT while the child is inside it.
CHILD = """
import signal, sys, time
from pathlib import Path
# a background job of a non-interactive shell starts with SIGINT ignored; a user's terminal does not
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
torch.set_num_threads(1)
import bnn_nested.runs.run as run_mod
name, flag = sys.argv[1], Path(sys.argv[2])
original = getattr(run_mod, name)
def waiting(*args, **kwargs):
    if not flag.exists():
        flag.write_text("in")
        time.sleep(60)
    return original(*args, **kwargs)
setattr(run_mod, name, waiting)
from bnn_nested.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", ["prepare_from_trained", "recalibrate_bn_widths"])
def test_a_real_sigint_in_any_phase_leaves_a_resumable_run(reference, tmp_path, step):
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    cfg, ref = reference
    run, flag = tmp_path / "run", tmp_path / "flag"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    argv = ["train", "--config", str(cfg), "--out", str(run), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, step, str(flag), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.monotonic() + 60
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the child never reached the step"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"--resume {run}" in lines[0], err
    assert _resume(run) == 0
    _same(_final(run), _final(ref))
