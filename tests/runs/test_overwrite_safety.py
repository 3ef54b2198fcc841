"""``train --overwrite`` (issue 28): a kill at any point of clearing the old run never leaves the
old run's products (report, history, plots) beside a run they do not describe, and the files
bnn-nested's own commands add to a run (``evaluate --calibrate temperature``, ``cascade``) do not
make the run irreplaceable."""

from __future__ import annotations

import pathlib

import pytest

from bnn_nested.cli.main import main
from bnn_nested.runs import rundir
from bnn_nested.runs.rundir import MARKER, check_replaceable, clear_run, write_marker
from tests.trained_runs import copy_run, train_tiny

PRODUCTS = ("history.json", "report.md", "report.json", "keep_probs.json", "cascade.json")
IDENTITY = ("checkpoint.pt", "config.yaml")


class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even ``except Exception``)."""


def _fake_run(root: pathlib.Path) -> pathlib.Path:
    root.mkdir()
    write_marker(root)
    for name in (*IDENTITY, *PRODUCTS):
        (root / name).write_text("old")
    for folder in ("plots", "deploy", "calibration"):
        (root / folder).mkdir()
        (root / folder / "x.json").write_text("old")
    return root


@pytest.mark.parametrize("reverse", [False, True])
def test_a_kill_during_overwrite_never_leaves_old_products_without_their_run(
    tmp_path, monkeypatch, reverse
):
    listing = pathlib.Path.iterdir  # any directory order: the file system's is arbitrary
    monkeypatch.setattr(
        pathlib.Path,
        "iterdir",
        lambda self: iter(sorted(listing(self), key=lambda p: p.name, reverse=reverse)),
    )
    k = 0
    while True:
        run = _fake_run(tmp_path / f"run{k}")
        calls = {"n": 0}

        def counted(real, calls=calls, k=k):
            def f(*a, **kw):
                if calls["n"] == k:
                    raise _Killed
                calls["n"] += 1
                return real(*a, **kw)

            return f

        with monkeypatch.context() as m:
            m.setattr(rundir.shutil, "rmtree", counted(rundir.shutil.rmtree))
            m.setattr(pathlib.Path, "unlink", counted(pathlib.Path.unlink))
            try:
                clear_run(run)
                finished = True
            except _Killed:
                finished = False
        left = {p.name for p in run.iterdir()}
        products = left & {*PRODUCTS, "plots", "deploy", "calibration"}
        if products:  # old products only beside the checkpoint and config they came from
            assert set(IDENTITY) <= left, (k, sorted(left))
        assert MARKER in left  # still a run: the next --overwrite finishes the job
        check_replaceable(run)
        if finished:
            assert left == {MARKER}
            break
        k += 1


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tmp_path_factory.mktemp("overwrite") / "run"
    assert train_tiny(run) == 0
    return run


def test_overwrite_replaces_a_run_after_calibrate_and_cascade(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    argv = ["evaluate", str(run), "--calibrate", "temperature", "--no-plots", "--samples", "2"]
    assert main(argv) == 0
    assert main(["cascade", str(run), "--target-accuracy", "0.1", "--samples", "2"]) == 0
    capsys.readouterr()
    assert (run / "calibration").is_dir() and (run / "cascade.json").is_file()
    assert train_tiny(run, "--overwrite") == 0, capsys.readouterr().err
    assert not (run / "calibration").exists() and not (run / "cascade.json").exists()
