"""Config and CLI for nestified models: torchvision / import / vit, validated like every field."""

from __future__ import annotations

import json

import pytest

from bnn_nested.cli.main import main
from bnn_nested.config import ConfigError, load_config
from bnn_nested.nest import NestifiedModel


def _train(tmp_path, sets, capsys=None):
    run = tmp_path / "run"
    argv = ["train", "--config", "configs/digits_mlp.yaml", "--out", str(run), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    return main(argv), run


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_import_model_trains_evaluates_selects(tmp_path, capsys):
    rc, run = _train(
        tmp_path,
        [
            "model.name=import",
            "model.target=tests.nest.factories:tiny_residual",
            "model.kwargs={width: 16}",
            "model.groups=4",
            "model.kept=1",
            "train.epochs=2",
        ],
    )
    assert rc == 0, capsys.readouterr().err
    # a run whose config imports code is evaluated only when trusted (--allow-import)
    assert main(["evaluate", str(run), "--widths", "0.25,1", "--allow-import"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["widths"]["1"]["cls/acc"] > 0.5
    # FLOPs of the sliced network: fewer at 0.25 than at 1
    assert report["widths"]["0.25"]["cost/flops"] < report["widths"]["1"]["cost/flops"]
    assert (
        main(["select", str(run), "--widths", "0.25,1", "--max-flops", "1e12", "--allow-import"])
        == 0
    )
    ordering = (run / "ordering.md").read_text()
    assert "| stem |" in ordering  # reported by dimension name


@pytest.mark.parametrize(
    "sets, needle",
    [
        (["model.name=torchvision"], "arch: name 'torchvision' needs an architecture"),
        (
            ["model.name=torchvision", "model.arch=resnet19"],
            "model.arch: unknown torchvision architecture 'resnet19'; known: alexnet",
        ),
        (["model.name=import", "model.target=os.path"], "'package.module:factory'"),
        (["model.name=import", "model.target=/tmp/evil.py:f"], "not a file path"),
        (
            ["model.name=import", "model.target=no_such_pkg_xyz:f"],
            "model.target: cannot import module 'no_such_pkg_xyz'",
        ),
        (
            ["model.name=import", "model.target=tests.nest.factories:nope"],
            "has no attribute 'nope'",
        ),
        (
            ["model.name=import", "model.target=tests.nest.factories:NOT_CALLABLE"],
            "is not callable",
        ),
        (
            [
                "model.name=import",
                "model.target=tests.nest.factories:tiny_residual",
                "model.kwargs={depth: 3}",
            ],
            "model.kwargs: tests.nest.factories:tiny_residual: ",
        ),
        (["model.name=mlp", "model.arch=resnet18"], "arch: only for name 'torchvision'"),
        (["model.name=vit", "model.hidden=[64]"], "model.hidden: vit takes [dim, mlp_dim]"),
        (
            ["model.name=vit", "model.hidden=[64, 128]", "model.kwargs={layers: 2}"],
            "model.kwargs: unknown key(s) ['layers'] for vit",
        ),
    ],
)
def test_bad_model_fields_are_one_line_errors_and_write_nothing(tmp_path, capsys, sets, needle):
    rc, run = _train(tmp_path, sets)
    assert rc == 2
    assert needle in _err(capsys)
    assert not run.exists()


@pytest.mark.slow
def test_torchvision_and_vit_build_nestified(tmp_path):
    from bnn_nested.models import build_model

    cfg = load_config("configs/mnist5k_vit.yaml")
    model = build_model(cfg.model, {}, (1, 28, 28), 10)
    assert isinstance(model, NestifiedModel)
    kinds = {d.kind for d in model.structure}
    assert kinds == {"channels", "heads"}
    assert all(d.groups == 4 for d in model.structure if d.kind == "heads")
    cfg = load_config(
        "configs/digits_mlp.yaml", overrides=["model.name=torchvision", "model.arch=resnet18"]
    )
    model = build_model(cfg.model, {}, (64,), 10)  # 1-channel 8x8 digits: stem adapted
    assert model.net.conv1.in_channels == 1 and len(model.structure) >= 8


def test_import_target_needs_module_path():
    with pytest.raises(ConfigError, match="target"):
        load_config("configs/digits_mlp.yaml", overrides=["model.name=import", "model.target=x"])
