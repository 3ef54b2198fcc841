"""The run-lock refusal is immediate (issue 28: it took 5-8 s): a run another process is writing
is refused before torch is even imported, for ``train --out RUN --overwrite`` and
``train --resume RUN``. Checked by what was imported, not by a timing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bnn_nested.cli.train import RUN_LOCK
from bnn_nested.runs.rundir import LOCK
from tests.trained_runs import tree_digest, write_config

REPO = Path(__file__).resolve().parents[2]
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
PROBE = textwrap.dedent(
    """
    import sys
    from bnn_nested.cli.main import main
    rc = main(sys.argv[1:])
    print(rc, "torch" in sys.modules)
    """
)


def test_the_cli_names_the_run_lock_file():
    assert RUN_LOCK == LOCK


@pytest.fixture
def held(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".bnn-nested-run").write_text('{"tool": "bnn-nested", "kind": "run"}')
    (run / "config.yaml").write_text("seed: 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run / LOCK)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run, proc.pid
    finally:
        proc.kill()
        proc.communicate()


@pytest.mark.parametrize("mode", ["overwrite", "resume"])
def test_a_locked_run_is_refused_before_torch_is_imported(held, tmp_path, mode):
    run, pid = held
    cfg = write_config(tmp_path / "cfg.yaml")
    argv = (
        ["train", "--config", str(cfg), "--out", str(run), "--overwrite"]
        if mode == "overwrite"
        else ["train", "--resume", str(run)]
    )
    before = tree_digest(run)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert res.stdout.split() == ["2", "False"], (res.stdout, res.stderr[-2000:])
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "being written by another" in err[0] and str(pid) in err[0], err
    assert tree_digest(run) == before
