"""Examples smoke-run with tiny settings."""

import runpy
import sys

import pytest


@pytest.mark.slow
def test_uncertainty_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x", "--epochs", "1", "--out", str(tmp_path / "r")])
    runpy.run_path("examples/uncertainty_eval.py", run_name="__main__")
    assert "cls/acc" in capsys.readouterr().out
    assert (tmp_path / "r" / "report.md").is_file()
