"""Run directories (issue 18, items 1, 2 and the orphan part of 8): ``--overwrite`` replaces only a
bnn-nested run and leaves anything else byte-for-byte as it was; one writer per run (advisory
lock); temporary files a kill left behind are removed by the next writer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml

from bnn_nested.cli.main import main
from bnn_nested.runs.rundir import LOCK, MARKER
from bnn_nested.training.checkpoint import load_checkpoint, save_checkpoint
from tests.trained_runs import copy_run, train_tiny, tree_digest, write_config


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A finished tiny run (never modified: tests copy it)."""
    run = tmp_path_factory.mktemp("rundir") / "run"
    assert train_tiny(run) == 0
    return run


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn-nested: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    out = tmp_path / "thesis"
    (out / "sub").mkdir(parents=True)
    (out / "thesis.tex").write_text("\\documentclass{article}\n")
    (out / "sub" / "data.csv").write_text("a,b\n1,2\n")
    before = tree_digest(out)
    assert train_tiny(out, "--overwrite") == 2
    assert "not a bnn-nested run" in _one_error_line(capsys)
    assert tree_digest(out) == before


def test_overwrite_refuses_a_run_holding_foreign_files(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    (run / "notes.txt").write_text("my notes")
    before = tree_digest(run)
    assert train_tiny(run, "--overwrite") == 2
    assert "notes.txt" in _one_error_line(capsys)
    assert tree_digest(run) == before


def test_overwrite_refuses_a_file_named_like_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    out.write_text("not a directory")
    assert train_tiny(out, "--overwrite") == 2
    _one_error_line(capsys)
    assert out.read_text() == "not a directory"


def test_empty_out_is_refused_and_the_current_directory_untouched(tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "precious.txt").write_text("keep me")
    cfg = write_config(tmp_path / "cfg.yaml")
    monkeypatch.chdir(cwd)
    before = tree_digest(cwd)
    for out in ("", " "):
        assert main(["train", "--config", str(cfg), "--out", out, "--overwrite", "--quiet"]) == 2
        assert "--out" in _one_error_line(capsys)
    assert tree_digest(cwd) == before


def test_overwrite_replaces_a_run(template, tmp_path):
    run = copy_run(template, tmp_path / "run")
    (run / "deploy").mkdir()
    (run / "deploy" / "val_metrics.json").write_text("{}")
    cfg = write_config(tmp_path / "seed7.yaml", seed=7)
    assert train_tiny(run, "--overwrite", cfg=cfg) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 7
    assert load_checkpoint(run / "checkpoint.pt")["config"]["seed"] == 7
    assert not (run / "deploy").exists()  # nothing of the old run is left
    assert (run / MARKER).is_file()


def test_overwrite_replaces_a_run_written_before_the_marker(template, tmp_path):
    run = copy_run(template, tmp_path / "run")
    (run / MARKER).unlink()
    (run / LOCK).unlink()
    assert train_tiny(run, "--overwrite") == 0


# A second process holding the lock the way any flock(2) user would (no bnn_nested code).
HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, str(os.getpid()).encode())
    print("locked", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def held(template, tmp_path):
    """A copy of the run whose lock another process holds (the writer of issue item 2)."""
    run = copy_run(template, tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run / LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc.pid
    finally:
        proc.kill()
        proc.communicate()  # waits and closes the pipe (else a ResourceWarning, an error here)


def test_second_writer_is_refused_with_one_line(held, tmp_path, capsys):
    run, pid = held
    before = tree_digest(run)
    cfg = write_config(tmp_path / "seed7.yaml", seed=7, train={"epochs": 2})
    t0 = time.monotonic()
    assert train_tiny(run, "--overwrite", cfg=cfg) == 2
    line = _one_error_line(capsys)
    assert "being written by another" in line and str(pid) in line
    assert time.monotonic() - t0 < 10  # refused at once, not after waiting
    assert tree_digest(run) == before  # config, checkpoint: still those of the first writer


def test_resume_of_a_run_being_written_is_refused(held, capsys):
    run, _ = held
    ckpt = run / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["complete"] = False
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "format_version"})
    before = tree_digest(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "being written by another" in _one_error_line(capsys)
    assert tree_digest(run) == before


def test_the_lock_is_released_after_training(template, tmp_path):
    run = copy_run(template, tmp_path / "run")
    import fcntl

    fd = os.open(run / LOCK, os.O_RDWR)
    try:  # nobody holds it: a non-blocking lock succeeds
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_resume_removes_orphan_temporary_files(template, tmp_path):
    run = copy_run(template, tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state["complete"] = False  # stopped during the post-training steps: resumable
    save_checkpoint(ckpt, {k: v for k, v in state.items() if k != "format_version"})
    orphans = [run / ".checkpoint.pt.k1ll3d_x.tmp", run / ".history.json.abcd1234.tmp"]
    (run / "deploy").mkdir()
    orphans.append(run / "deploy" / ".profile.json.zz9_plur.tmp")
    for p in orphans:
        p.write_bytes(torch.randn(10).numpy().tobytes())
    keep = run / "my.tmp"  # not one of ours: kept
    keep.write_text("x")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not any(p.exists() for p in orphans)
    assert keep.read_text() == "x"
    assert load_checkpoint(ckpt)["complete"]
