"""Code from a run directory (issue 28): a run whose checkpoint config lists ``imports`` (or
``model.name: import``) is not imported by ``evaluate`` / ``select`` / ``cascade`` /
``export-weights`` / ``load_run`` unless the reader says it trusts the run (``--allow-import``,
``allow_import=True``), as ``from_pretrained`` and ``load_width_weights`` already required."""

from __future__ import annotations

import sys

import pytest
import torch

from bnn_nested.cli.main import main
from bnn_nested.runs.build import RunImportRefused
from bnn_nested.runs.loaded import load_run
from bnn_nested.runs.pretrained import from_run
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


@pytest.mark.parametrize("stopped", ["mid-run", "before the first checkpoint"])
def test_train_resume_of_a_run_that_imports_modules_needs_allow_import(planted, capsys, stopped):
    """``train --resume RUN`` reads the config from the run directory (not from the command line),
    so it is a reader of a possibly foreign run like ``evaluate``: refused without
    ``--allow-import``, nothing run or written; with it the run is finished."""
    import yaml

    run, proof = planted
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    if stopped == "mid-run":
        state["complete"] = False
        torch.save(state, run / "checkpoint.pt")
        where = "checkpoint.pt"
    else:  # resume starts it over from config.yaml
        for p in run.iterdir():
            if p.is_file() and p.name not in (".bnn-nested-run", ".bnn-nested.lock"):
                p.unlink()
        (run / "config.yaml").write_text(yaml.safe_dump(state["config"]))
        where = "config.yaml"
    before = tree_digest(run)
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn-nested: error:"), err
    assert "planted_mod" in err[0] and "--allow-import" in err[0] and where in err[0]
    assert not proof.exists()  # no code ran
    assert tree_digest(run) == before
    assert main(["train", "--resume", str(run), "--quiet", "--allow-import"]) == 0
    assert proof.exists()
    assert torch.load(run / "checkpoint.pt", weights_only=True)["complete"]


def test_the_resume_hint_of_a_run_that_imports_modules_says_allow_import():
    from bnn_nested.config import build_config
    from bnn_nested.runs.run import resume_command

    cfg = build_config({"imports": ["planted_mod"], "data": {"name": "digits"}})
    assert resume_command("runs/a", 1, cfg) == "bnn-nested train --resume runs/a --allow-import"
    assert resume_command("runs/a", 2, build_config({})).endswith("train --resume runs/a")
