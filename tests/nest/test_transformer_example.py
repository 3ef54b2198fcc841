"""examples/transformer_text.py smoke-run with few steps (needs the optional transformers)."""

import runpy
import sys

import pytest


@pytest.mark.slow
def test_transformer_text_example(monkeypatch, capsys):
    pytest.importorskip("transformers", reason="optional extra: bnn-nested[hf]")
    monkeypatch.setattr(sys, "argv", ["x", "--steps", "5"])
    runpy.run_path("examples/transformer_text.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "(heads of 16)" in out and "intermediate.dense" in out  # heads and FFN ordered
    diff = float(out.split("max |difference| ")[1].split(";")[0])
    assert diff < 1e-4
