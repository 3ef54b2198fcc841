"""Threads (``--threads``, ``train.threads``), progress output in logs, the per-epoch line."""

from __future__ import annotations

import io

import pytest
import torch

from bnn_nested.cli.main import main
from bnn_nested.config import ConfigError, build_config
from bnn_nested.progress import Progress, epoch_line, progress
from bnn_nested.threads import AUTO_THREADS, apply_threads, available_cores, resolve_threads


def test_resolve_threads():
    assert resolve_threads(None) == resolve_threads("auto") == min(AUTO_THREADS, available_cores())
    assert resolve_threads(3) == resolve_threads("3") == 3
    for bad in (0, -1, 1025, "x", 2.5, True, "2.0"):
        with pytest.raises(ValueError, match="threads: expected 'auto' or an integer in"):
            resolve_threads(bad)


def test_apply_threads_sets_torch():
    before = torch.get_num_threads()
    try:
        assert apply_threads(2) == 2 and torch.get_num_threads() == 2
        assert apply_threads("auto") == torch.get_num_threads() == resolve_threads("auto")
    finally:
        torch.set_num_threads(before)


def test_config_threads():
    assert build_config({}).train.threads == "auto"
    assert build_config({}, ["train.threads=4"]).train.threads == 4
    with pytest.raises((ConfigError, ValueError), match=r"train\.threads: expected 'auto'"):
        build_config({"train": {"threads": 0}})


@pytest.mark.parametrize("command", ["train", "evaluate", "compare", "select", "cascade"])
def test_every_command_has_threads(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "configs/digits_mlp.yaml", "--out", "X", "--threads", "0"],
        ["evaluate", "runs/none", "--threads", "many"],
        ["select", "runs/none", "--threads", "2000"],
    ],
)
def test_bad_threads_is_one_line_exit_2(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "--threads" in err and "'auto' or an integer in [1, 1024]" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "X").exists()


def test_resume_refuses_threads(capsys):
    assert main(["train", "--resume", "runs/x", "--threads", "2"]) == 2
    assert "drop --threads" in capsys.readouterr().err


def test_progress_prints_periodic_lines_when_not_a_terminal(monkeypatch):
    out = io.StringIO()  # not a terminal
    clock = iter(range(0, 1000, 10))  # 10 s per step
    monkeypatch.setattr("bnn_nested.progress.time.monotonic", lambda: float(next(clock)))
    items = list(progress(range(8), desc="epoch 1", stream=out, interval=25.0))
    assert items == list(range(8))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # start at t=0, one update every 10 s: lines at 30 s, 60 s and the final line
    assert lines[0].startswith("epoch 1: 3/8 (38%), 30.0 s, ~50.0 s left")
    assert lines[-1].startswith("epoch 1: 8/8 (100%)")
    assert len(lines) == 3


def test_progress_disabled_and_quick_jobs_print_nothing():
    out = io.StringIO()
    list(progress(range(5), desc="x", stream=out, enabled=False, interval=0.0))
    with Progress(5, "y", stream=out, interval=3600.0) as p:
        p.update(5)
    assert out.getvalue() == ""


def test_epoch_line_names_nll_and_kl_over_n():
    rec = {"epoch": 3, "loss": 436.377, "data": 0.577, "kl": 435.8, "penalty": 0.0, "val_acc": 0.9}
    line = epoch_line(rec)
    assert line == "epoch   3 loss 436.3770 nll 0.5770 kl/N 435.8000 val_acc 0.9000"
    tiny = epoch_line({"epoch": 1, "loss": 0.5, "data": 0.5, "kl": 3.2e-6})
    assert "kl/N 3.2e-06" in tiny  # not 0.0000
    assert "penalty 0.0100" in epoch_line(
        {"epoch": 1, "loss": 1, "data": 1, "kl": 0, "penalty": 0.01}
    )


def test_evaluate_reports_progress_in_logs(monkeypatch, capsys):
    """evaluate(progress=True) with stderr not a terminal: lines naming the width and OOD set."""
    from torch.utils.data import TensorDataset

    from bnn_nested.evaluation.report import evaluate
    from tests.zoo import mlp

    monkeypatch.setenv("BNN_NESTED_LOG_INTERVAL", "0")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(40, 8, generator=g), torch.randint(0, 3, (40,), generator=g))
    noise = TensorDataset(torch.randn(20, 8, generator=g), torch.zeros(20, dtype=torch.long))
    model = mlp(8, 3, hidden=[16], groups=4, kept=1).eval()
    evaluate(model, data, [0.5, 1.0], ood={"noise": noise}, batch_size=10, progress=True)
    err = capsys.readouterr().err.splitlines()
    total = 2 * (4 + 2)  # widths x (test batches + OOD batches)
    assert f"evaluate width 1 ood noise: {total}/{total} (100%)" in err[-1]
    assert any(line.startswith("evaluate width 0.5: 1/12") for line in err)


@pytest.mark.slow
def test_train_prints_progress_and_named_loss_parts_in_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BNN_NESTED_LOG_INTERVAL", "0")
    out = tmp_path / "r"
    argv = ["train", "--config", "configs/digits_mlp.yaml", "--out", str(out)]
    assert main([*argv, "--set", "train.epochs=1", "--threads", "1"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "epoch 1: 1/" in err and "epoch 1: 19/19 (100%)" in err  # 1,167 examples / 64
    assert "nll " in err and "kl/N " in err and "kl 0.0000" not in err
    assert "threads: 1" in (out / "config.yaml").read_text()
