"""From a trained plain network: --init-from, importance ordering, distillation fine-tuning."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from bnn_nested.cli.main import main
from bnn_nested.config import ConfigError, load_config
from bnn_nested.data import load_dataset
from bnn_nested.models import MLP, build_model
from bnn_nested.training.objective import distillation_loss
from bnn_nested.training.trainer import Trainer


@pytest.fixture(scope="module")
def plain_mlp(tmp_path_factory):
    """A plain MLP 64-64-10 trained 3 epochs on digits; its state dict on disk."""
    torch.manual_seed(0)
    splits = load_dataset(load_config("configs/digits_mlp.yaml").data)
    net = MLP(64, 10, [64])
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=64, shuffle=True)
    for _ in range(3):
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    path = tmp_path_factory.mktemp("plain") / "plain.pt"
    torch.save(net.state_dict(), path)
    return path, net


def _argv(run, plain, *sets):
    argv = ["train", "--config", "configs/digits_mlp.yaml", "--out", str(run), "--quiet"]
    argv += ["--init-from", str(plain), "--set", "model.hidden=[64]"]
    for s in sets:
        argv += ["--set", s]
    return argv


@pytest.mark.slow
def test_init_from_importance_and_distillation_end_to_end(tmp_path, plain_mlp, capsys):
    plain, net = plain_mlp
    run = tmp_path / "run"
    rc = main(
        _argv(
            run,
            plain,
            "model.order=importance",
            "ordering.init=importance",
            "train.teacher=original",
            "train.epochs=1",
        )
    )
    assert rc == 0, capsys.readouterr().err
    assert (run / "teacher.pt").is_file()
    history = json.loads((run / "history.json").read_text())
    assert history[0]["distill"] > 0
    teacher = torch.load(run / "teacher.pt", weights_only=True)
    torch.testing.assert_close(teacher["features.0.weight"], net.state_dict()["features.0.weight"])
    assert main(["evaluate", str(run), "--widths", "0.5,1"]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["widths"]["1"]["cls/acc"] > 0.85


def test_init_from_shape_mismatch_is_one_line_and_writes_nothing(tmp_path, plain_mlp, capsys):
    plain, _ = plain_mlp
    run = tmp_path / "run"
    argv = _argv(run, plain, "model.hidden=[32]")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "model.init_from" in err
        and "'features.0.weight' has shape (64, 64), the model needs (32, 64)" in err
    )
    assert not run.exists()


def test_teacher_original_needs_init_from():
    with pytest.raises(
        ConfigError, match="train.teacher: 'original' distils from the network of model.init_from"
    ):
        load_config("configs/digits_mlp.yaml", overrides=["train.teacher=original"])


def test_distillation_fine_tuning_lowers_the_distillation_loss_on_a_fixed_batch(plain_mlp):
    _, net = plain_mlp
    torch.manual_seed(0)
    cfg = load_config(
        "configs/digits_mlp.yaml",
        overrides=[
            "model.hidden=[64]",
            "train.teacher=/x",
            "regularization.kind=none",
            "train.lr=0.003",
        ],
    )
    splits = load_dataset(cfg.data)
    student = build_model(cfg.model, {}, (64,), 10)  # random init
    teacher = net.eval()
    x, y = next(iter(torch.utils.data.DataLoader(splits.train, batch_size=128)))
    trainer = Trainer(student, cfg, n_train=splits.num_train, teacher=teacher)

    def distill() -> float:
        student.eval()
        with torch.no_grad():
            return float(distillation_loss(student(x, width=0.5), teacher(x), cfg.train))

    before = distill()
    for _ in range(30):
        parts = trainer.train_step(x, y)
    assert parts["distill"] > 0
    assert distill() < 0.5 * before


@pytest.mark.parametrize(
    "spoil, needle",
    [
        (lambda t: t.round().long(), "is int64, the model needs floating point (float32)"),
        (lambda t: t.index_fill(1, torch.tensor([0]), float("nan")), "holds NaN or infinite"),
    ],
)
def test_init_from_integer_or_non_finite_weights_is_one_line(
    tmp_path, plain_mlp, capsys, spoil, needle
):
    """Integer weights were loaded as truncated floats, NaN ones failed as 'loss became nan'."""
    plain, _ = plain_mlp
    state = torch.load(plain, weights_only=True)
    state["features.0.weight"] = spoil(state["features.0.weight"])
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    run = tmp_path / "run"
    assert main(_argv(run, bad)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'features.0.weight'" in err and needle in err, err
    assert not run.exists()
