"""Messages and paths of issue 28 ("what a new user hit"): each case names the cause in one line,
or works."""

from __future__ import annotations

import os
import re

import pytest

from bnn_nested.cli.main import main
from tests.trained_runs import copy_run, train_tiny, tree_digest, write_config

EVAL = ["--no-plots", "--widths", "1"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    run = tmp_path_factory.mktemp("msg28") / "run"
    assert train_tiny(run) == 0
    return run


def _one_error_line(capsys) -> str:
    out = capsys.readouterr()
    lines = [ln for ln in out.err.strip().splitlines() if not ln.startswith("bnn-nested: note:")]
    assert len(lines) == 1 and lines[0].startswith("bnn-nested: error:"), out.err[-2000:]
    assert "Traceback" not in out.err and len(lines[0]) < 600
    return lines[0]


def test_a_run_in_a_folder_whose_name_is_not_utf8_can_be_evaluated(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / os.fsdecode(b"bad\xffname"))
    assert main(["evaluate", str(run), "--no-plots", "--widths", "1"]) == 0, capsys.readouterr()
    assert "bad\\udcffname" in (run / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("widths", [["--widths", "1"], []])
def test_a_one_stage_cascade_is_refused_in_one_line(template, tmp_path, capsys, widths):
    run = copy_run(template, tmp_path / "run")
    if not widths:  # the run's own eval.widths has one width
        import torch

        state = torch.load(run / "checkpoint.pt", weights_only=True)
        state["config"]["eval"]["widths"] = [1.0]
        torch.save(state, run / "checkpoint.pt")
    before = tree_digest(run)
    assert main(["cascade", str(run), "--target-accuracy", "0.5", *widths]) == 2
    line = _one_error_line(capsys)
    assert "at least two widths" in line and "torch" not in line
    assert tree_digest(run) == before


def test_init_from_a_folder_says_it_is_a_folder(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--init-from"]
    assert main([*argv, str(tmp_path)]) == 2
    line = _one_error_line(capsys)
    assert "is a folder" in line and "no such file" not in line
    assert not (tmp_path / "run").exists()


def test_out_as_a_link_to_a_folder_says_it_is_a_link(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    link = tmp_path / "link"
    link.symlink_to(run)
    before = tree_digest(run)
    assert train_tiny(link, "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "symbolic link" in line and "not a directory" not in line
    assert tree_digest(run) == before


def test_escape_bytes_in_a_config_key_are_not_echoed_raw(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text('data: {name: digits}\nmodel: {name: mlp, "\\e[31mred\\a\\u202e": 1}\n')
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert "\x1b" not in line and "\x07" not in line and "\u202e" not in line
    assert "\\x1b[31mred\\x07\\u202e" in line


def test_a_syntax_error_in_the_users_module_is_one_line(tmp_path, capsys, monkeypatch):
    (tmp_path / "broken_mod28.py").write_text("def f(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = write_config(tmp_path / "cfg.yaml", imports=["broken_mod28"])
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert "syntax error" in line and "broken_mod28.py, line 1" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "sections",
    [
        {"imports": ["my_pkg28"]},
        {"model": {"name": "import", "target": "my_pkg28.models:build"}},
    ],
)
def test_a_module_not_on_the_path_gets_a_pythonpath_hint(tmp_path, capsys, sections):
    cfg = write_config(tmp_path / "cfg.yaml", **sections)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys)
    assert "my_pkg28" in line and "PYTHONPATH" in line


@pytest.mark.filterwarnings(
    "default"
)  # as a user's Python shows them (the suite makes them errors)
def test_warnings_are_one_line_without_source_paths(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.yaml")
    cfg.write_text(cfg.read_text().replace("kept: 1", "frozen: 1"))  # deprecated key: a warning
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bnn-nested: warning: model.frozen is deprecated: use model.kept"], err


def test_evaluate_says_when_config_yaml_was_edited(template, tmp_path, capsys):
    run = copy_run(template, tmp_path / "run")
    assert main(["evaluate", str(run), *EVAL]) == 0
    assert "config.yaml" not in capsys.readouterr().err  # unedited: no note
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("samples: 1", "samples: 7") + '"\\e[2J": 1\n')
    assert main(["evaluate", str(run), *EVAL]) == 0
    notes = [ln for ln in capsys.readouterr().err.splitlines() if "config.yaml" in ln]
    assert len(notes) == 1 and "eval.samples" in notes[0] and "not applied" in notes[0], notes
    assert "\x1b" not in notes[0] and "\\x1b[2J" in notes[0]


#: Python's own words for a failure inside the code, never a reason a user can act on.
#: (``"('widths')"`` is a KeyError's text: a quoted name alone in parentheses.)
INTERNALS = re.compile(
    r"NoneType|subscriptable|list indices|invalid literal|object has no|\('\w+'\)"
)


@pytest.mark.parametrize(
    "doc",
    [
        '{"step": 19}',
        '{"step": 19, "widths": {"1": null}}',
        "[1]",
        '{"step": "x", "widths": {}}',
        '{"widths": {"1": {"temperature": -1}}}',
        '{"widths": {"wide": {"temperature": 1.5}}}',
        "{not json",
    ],
)
@pytest.mark.parametrize("command", ["evaluate", "select", "cascade"])
def test_a_malformed_temperature_file_is_named_without_python_internals(
    template, tmp_path, capsys, doc, command
):
    run = copy_run(template, tmp_path / "run")
    (run / "calibration").mkdir()
    path = run / "calibration" / "temperature.json"
    path.write_text(doc)
    argv = {
        "evaluate": ["evaluate", str(run), *EVAL],
        "select": ["select", str(run), "--widths", "1"],
        "cascade": ["cascade", str(run), "--target-accuracy", "0.1", "--no-plots"],
    }[command]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert str(path) in line and not INTERNALS.search(line), line
    if command == "evaluate":  # the fix the message names works
        assert main([*argv, "--calibrate", "temperature"]) == 0


@pytest.mark.filterwarnings("default:.*fitted on checkpoint step:UserWarning")
@pytest.mark.parametrize(
    "edit, argv",
    [  # found by tests/cli/test_file_sweep.py once it covered cascade and export-weights
        (
            {"step": ""},
            ["cascade", "--target-accuracy", "0.1", "--widths", "0.5,1", "--no-plots"],
        ),
        ({"meta": None}, ["export-weights", "--out", "EXPORTED"]),
    ],
)
def test_a_damaged_checkpoint_entry_is_not_python_internals(template, tmp_path, capsys, edit, argv):
    import torch

    run = copy_run(template, tmp_path / "run")
    argv = [a.replace("EXPORTED", str(tmp_path / "w")) for a in argv]
    assert main(["evaluate", str(run), *EVAL, "--calibrate", "temperature"]) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state.update(edit)
    torch.save(state, run / "checkpoint.pt")
    capsys.readouterr()
    rc = main([argv[0], str(run), *argv[1:]])
    if rc == 2:
        line = _one_error_line(capsys)
        assert str(run / "checkpoint.pt") in line and not INTERNALS.search(line), line
    else:
        assert rc in (0, 1)
        assert "Traceback" not in capsys.readouterr().err


def test_a_rank_other_than_0_prints_only_when_rank_0_did_not_end_it(tmp_path, capsys, monkeypatch):
    """Under torchrun rank 0 reports the errors every rank meets alike; another rank waits for
    torchrun to end it (it does, once rank 0 has failed). If that does not happen, rank 0 did not
    fail, so this rank says why, naming itself."""
    import bnn_nested.cli.main as cli

    monkeypatch.setattr(cli, "RANK_WAIT_S", 0.05)
    monkeypatch.setenv("RANK", "1")
    missing = ["train", "--config", str(tmp_path / "absent.yaml"), "--out", str(tmp_path / "r")]
    assert main(missing) == 2
    assert _one_error_line(capsys).startswith("bnn-nested: error: rank 1: ")
    monkeypatch.setenv("RANK", "0")
    assert main(missing) == 2
    line = _one_error_line(capsys)
    assert line.startswith("bnn-nested: error: config file ")
