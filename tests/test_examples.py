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


@pytest.mark.slow
def test_bring_your_own_model_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x", "--epochs", "1", "--out", str(tmp_path / "r")])
    runpy.run_path("examples/bring_your_own_model.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "attn.self_attn.heads" in out and "attn.linear1" in out  # heads and MLP ordered
    assert "cls/acc" in out
    diff = float(out.split("max |difference| ")[1].split(";")[0])
    assert diff < 1e-4


@pytest.mark.slow
def test_from_trained_example(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["x", "--epochs", "2", "--finetune", "1"])
    runpy.run_path("examples/from_trained.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "converted, importance order" in out and "+ 1 epochs distillation" in out
