"""End to end through the command line (small runs)."""

import json

import pytest

from bnn_nested.cli.main import main

CONFIGS = __import__("pathlib").Path(__file__).parents[2] / "configs"


@pytest.mark.slow
def test_train_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            "configs/digits_mlp.yaml",
            "--out",
            str(run),
            "--quiet",
            "--set",
            "train.epochs=3",
            "--set",
            "model.hidden=[64]",
        ]
    )
    assert rc == 0
    assert (run / "checkpoint.pt").is_file() and (run / "config.yaml").is_file()
    rc = main(["evaluate", str(run), "--widths", "0.5,1"])
    out = capsys.readouterr().out
    assert rc == 0 and "cls/acc" in out
    report = json.loads((run / "report.json").read_text())
    assert set(report["widths"]) == {"0.5", "1"}
    assert report["widths"]["1"]["cls/acc"] > 0.8
    # never overwrite an existing run silently
    rc = main(["train", "--config", "configs/digits_mlp.yaml", "--out", str(run), "--quiet"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (
            [
                "train",
                "--config",
                "configs/digits_mlp.yaml",
                "--out",
                "X",
                "--set",
                "ordering.temperature=0",
            ],
            "ordering.temperature",
        ),
        (
            [
                "train",
                "--config",
                "configs/digits_mlp.yaml",
                "--out",
                "X",
                "--set",
                "eval.widths=[0]",
            ],
            "eval.widths",
        ),
        (
            [
                "train",
                "--config",
                "configs/digits_mlp.yaml",
                "--out",
                "X",
                "--set",
                "model.hiden=[3]",
            ],
            "did you mean 'hidden'",
        ),
        (["evaluate", "nowhere"], "nowhere"),
        (["evaluate", "nowhere", "--widths", "0,1"], "width"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [
        a.replace(
            "configs/", str(__import__("pathlib").Path(__file__).parents[2] / "configs") + "/"
        )
        for a in argv
    ]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and needle in err
    assert not (tmp_path / "X").exists()


@pytest.mark.parametrize(
    "sets, needle",
    [
        (
            ["model.name=lenet", "model.hidden=[16,30,256]", "data.name=mnist5k"],
            "model.groups: 16 must divide every ordered width, not [30]",
        ),
        (
            ["model.name=vgg", "model.groups=7", "data.name=cifar10", "data.root=/nowhere"],
            "model.groups: 7 must divide",
        ),
        (["model.name=lenet", "model.hidden=[16,32]", "data.name=mnist5k"], "model.hidden"),
    ],
)
def test_model_config_errors_fail_before_any_data_is_read(sets, needle, tmp_path, capsys):
    """A model that cannot be built fails in one line before data loading and writes nothing."""
    argv = ["train", "--config", str(CONFIGS / "digits_mlp.yaml"), "--out", str(tmp_path / "r")]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "r").exists()
