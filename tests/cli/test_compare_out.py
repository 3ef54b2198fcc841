"""``compare --out`` (issue 28, data loss): compare writes only into a folder it created or wrote
before (marked), never over a user's own ``compare.md`` or ``plots/*_vs_width.png``."""

from __future__ import annotations

import json

from bnn_nested.cli.main import main
from tests.trained_runs import tree_digest

GOOD = {"widths": {"0.5": {"cls/acc": 0.9}, "1": {"cls/acc": 0.95}}, "meta": {"data": "digits"}}


def _runs(tmp_path):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(GOOD))
        runs.append(str(tmp_path / name))
    return runs


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnn-nested: error:"), err
    return err[0]


def test_compare_refuses_an_existing_folder_it_did_not_write(tmp_path, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "mine"
    (out / "plots").mkdir(parents=True)
    (out / "compare.md").write_text("my own notes\n")
    (out / "plots" / "cls_acc_vs_width.png").write_bytes(b"my own plot")
    before = tree_digest(out)
    assert main(["compare", *runs, "--out", str(out), "--metrics", "cls/acc"]) == 2
    line = _one_error_line(capsys)
    assert "--out" in line and str(out) in line and "compare" in line
    assert tree_digest(out) == before


def test_compare_refuses_a_file_as_out(tmp_path, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "file"
    out.write_text("keep")
    assert main(["compare", *runs, "--out", str(out), "--metrics", "cls/acc"]) == 2
    assert "--out" in _one_error_line(capsys)
    assert out.read_text() == "keep"


def test_compare_rewrites_its_own_folder_and_an_empty_one(tmp_path, capsys):
    runs = _runs(tmp_path)
    out = tmp_path / "cmp"
    out.mkdir()  # empty: accepted
    for metrics in ("cls/acc", "cls/acc"):
        assert main(["compare", *runs, "--out", str(out), "--metrics", metrics]) == 0
    assert (out / "plots" / "cls_acc_vs_width.png").is_file()
    # the default folder (beside the runs) is rewritten on a second compare too
    assert main(["compare", *runs, "--metrics", "cls/acc"]) == 0
    assert main(["compare", *runs, "--metrics", "cls/acc"]) == 0
    capsys.readouterr()


def test_compare_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
    runs = _runs(tmp_path)
    monkeypatch.chdir(tmp_path / "a")
    before = tree_digest(tmp_path / "a")
    assert main(["compare", *runs, "--out", "", "--metrics", "cls/acc"]) == 2
    assert "--out" in _one_error_line(capsys)
    assert tree_digest(tmp_path / "a") == before
