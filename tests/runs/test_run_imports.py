"""Code from a run directory (issue 28): a run whose checkpoint config lists ``imports`` (or
``model.name: import``) is not imported by ``evaluate`` / ``select`` / ``cascade`` /
``export-weights`` / ``load_run`` unless the reader says it trusts the run (``--allow-import``,
``allow_import=True``), as ``from_pretrained`` and ``load_width_weights`` already required."""

from __future__ import annotations

import sys

import pytest
import torch

from bnn_nested.cli.main import main
from bnn_nested.runs.pretrained import from_run
from bnn_nested.runs.run import RunImportRefused, load_run
from tests.trained_runs import copy_run, train_tiny, tree_digest


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tmp_path_factory.mktemp("imports") / "run"
    assert train_tiny(run) == 0
    return run


@pytest.fixture
def planted(template, tmp_path, monkeypatch):
    """A copy of the run whose checkpoint config imports a module that leaves a file when run."""
    proof = tmp_path / "code-ran"
    pkg = tmp_path / "site"
    pkg.mkdir()
    (pkg / "planted_mod.py").write_text(f"open({str(proof)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "planted_mod", raising=False)
    run = copy_run(template, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["imports"] = ["planted_mod"]
    torch.save(state, run / "checkpoint.pt")
    return run, proof


COMMANDS = {
    "evaluate": lambda run: ["evaluate", str(run), "--no-plots", "--samples", "1"],
    "select": lambda run: ["select", str(run)],
    "cascade": lambda run: ["cascade", str(run), "--target-accuracy", "0.1", "--no-plots"],
    "export-weights": lambda run: ["export-weights", str(run), "--out", str(run.parent / "w")],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_run_that_imports_modules_is_refused_without_allow_import(planted, capsys, command):
    run, proof = planted
    before = tree_digest(run)
    assert main(COMMANDS[command](run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn-nested: error:"), err
    assert "planted_mod" in err[0] and "--allow-import" in err[0]
    assert not proof.exists()  # no code ran
    assert tree_digest(run) == before and not (run.parent / "w").exists()


def test_allow_import_trusts_the_run(planted, capsys):
    run, proof = planted
    argv = COMMANDS["evaluate"](run)
    assert main([*argv, "--allow-import"]) == 0, capsys.readouterr().err
    assert proof.exists()


def test_load_run_and_from_run_need_allow_import(planted):
    run, proof = planted
    with pytest.raises(RunImportRefused, match="planted_mod"):
        load_run(run)
    with pytest.raises(RunImportRefused, match="planted_mod"):
        from_run(run)
    assert not proof.exists()
    assert load_run(run, allow_import=True).config.imports == ["planted_mod"]
    assert proof.exists()
