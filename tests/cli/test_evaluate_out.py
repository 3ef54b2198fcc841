"""A read-only run can be evaluated (issue 28), and a failed write names the file, not the
temporary file it was being written through: ``evaluate --out DIR`` writes the report to ``DIR``
and nothing into the run; a run that cannot be written says so and names ``--out``. ``DIR`` is
refused when it holds files evaluate did not write (as ``compare --out``)."""

from __future__ import annotations

import errno
import json
import tempfile

import pytest

from bnn_nested import io as bio
from bnn_nested.cli.main import main
from tests.trained_runs import copy_run, train_tiny, tree_digest

ARGV = ["--no-plots", "--widths", "1"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tmp_path_factory.mktemp("evalout") / "run"
    assert train_tiny(run) == 0
    return run


@pytest.fixture
def read_only(template, tmp_path, monkeypatch):
    """A copy of the run that cannot be written (as a read-only mount: the suite may run as root,
    for whom permission bits do not stop a write)."""
    run = copy_run(template, tmp_path / "run")
    real = tempfile.mkstemp

    def mkstemp(*a, dir=None, prefix="", **kw):
        if dir is not None and str(dir).startswith(str(run)):  # as the OS says it: temp name too
            raise PermissionError(errno.EROFS, "Read-only file system", f"{dir}/{prefix}k1ll3d.tmp")
        return real(*a, dir=dir, prefix=prefix, **kw)

    monkeypatch.setattr(bio.tempfile, "mkstemp", mkstemp)
    return run


def test_a_read_only_run_is_evaluated_with_out(read_only, tmp_path, capsys):
    before = tree_digest(read_only)
    assert main(["evaluate", str(read_only), *ARGV]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Read-only" in err[0] and "--out" in err[0], err
    assert str(read_only / "report.json") in err[0]  # names the file,
    assert ".tmp" not in err[0]  # not the temporary one it was written through
    out = tmp_path / "report"
    assert main(["evaluate", str(read_only), *ARGV, "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["widths"]
    assert tree_digest(read_only) == before  # nothing written into the run
    assert main(["evaluate", str(read_only), *ARGV, "--out", str(out)]) == 0  # its own: again


def test_evaluate_out_refuses_a_folder_it_did_not_write(template, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.md").write_text("my own report")
    before = tree_digest(out)
    assert main(["evaluate", str(template), *ARGV, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "did not write" in err[0] and str(out) in err[0], err
    assert tree_digest(out) == before


@pytest.mark.parametrize("out", ["", " "])
def test_evaluate_out_refuses_an_empty_path(template, tmp_path, monkeypatch, capsys, out):
    monkeypatch.chdir(tmp_path)
    before = tree_digest(tmp_path)
    assert main(["evaluate", str(template), *ARGV, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out: empty path" in err[0], err
    assert tree_digest(tmp_path) == before
