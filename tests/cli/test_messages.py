"""Messages that name the cause (issue 18, item 8): malformed reports given to ``compare``, and
checkpoints that hold pickled code (refused, never run)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from bnn_nested.cli.main import main
from tests.trained_runs import copy_run, train_tiny, tree_digest, write_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("messages") / "run"
    assert train_tiny(run) == 0
    return run


def _one_line(capsys) -> str:
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnn-nested: error:"), out.err[:1000]
    assert "Traceback" not in out.err and len(lines[0]) < 600
    return lines[0]


GOOD = {"widths": {"0.5": {"cls/acc": 0.9, "cal/ece": 0.05}, "1": {"cls/acc": 0.95}}}


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"widths": []}),
        json.dumps({"widths": {"0.5": [0.9]}}),
        json.dumps({"widths": {"wide": {"cls/acc": 0.9}}}),
        json.dumps({"widths": {"0.5": {"cls/acc": [0.9]}}}),
        json.dumps({"meta": {}}),
        "\x00\xff\xfe",
    ],
)
def test_compare_names_a_malformed_report(text, tmp_path, capsys):
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    (good / "report.json").write_text(json.dumps(GOOD))
    (bad / "report.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    out = tmp_path / "cmp"
    assert main(["compare", str(good), str(bad), "--out", str(out)]) == 2
    assert str(bad / "report.json") in _one_line(capsys)
    assert not out.exists()


def test_compare_of_good_reports_still_works(tmp_path, capsys):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(GOOD))
        runs.append(str(tmp_path / name))
    out = tmp_path / "cmp"
    assert main(["compare", *runs, "--out", str(out), "--metrics", "cls/acc,cal/ece"]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["cls/acc"]["a"] == {"0.5": 0.9, "1": 0.95}
    assert data["cal/ece"]["b"]["1"] is None  # missing: null (strict JSON, not NaN)


class _Payload:
    """Unpickling this would create a file (harmless proof that code ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("command", ["evaluate", "select", "resume"])
def test_a_checkpoint_holding_code_is_refused_and_said_so(finished, tmp_path, capsys, command):
    run = copy_run(finished, tmp_path / "run")
    marker = tmp_path / "code-ran"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["extra"] = _Payload(str(marker))
    if command == "resume":
        state["complete"] = False
    torch.save(state, run / "checkpoint.pt")
    before = tree_digest(run)
    argv = {
        "evaluate": ["evaluate", str(run), "--no-plots"],
        "select": ["select", str(run)],
        "resume": ["train", "--resume", str(run), "--quiet"],
    }[command]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "holds code" in line and "refused" in line and str(run / "checkpoint.pt") in line
    assert not marker.exists()
    assert tree_digest(run) == before


def test_an_init_from_file_holding_code_is_refused_and_said_so(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": _Payload(str(marker))}, path)
    cfg = write_config(tmp_path / "cfg.yaml")
    argv = ["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--init-from", str(path)]
    assert main(argv) == 2
    line = _one_line(capsys)
    assert "holds code" in line and str(path) in line
    assert not marker.exists() and not (tmp_path / "run").exists()
