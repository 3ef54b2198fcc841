"""Devices and precision. CPU tests always run; CUDA tests are marked ``gpu`` and skip cleanly
without a GPU."""

from __future__ import annotations

import pytest
import torch
import yaml

from bnn_nested.cli.main import main
from bnn_nested.config import ConfigError, build_config
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer
from tests.zoo import mlp

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TINY = {"model": {"hidden": [16], "groups": 4, "kept": 1}, "train": {"lr": 0.05}}


def _trainer(device="cpu", **train):
    cfg = build_config({**TINY, "train": {**TINY["train"], "device": device, **train}})
    torch.manual_seed(0)
    model = mlp(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
    return Trainer(model, cfg, n_train=64, device=device, quiet=True)


def _batch(device="cpu"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    return x.to(device), (x[:, 0] > 0).long().to(device)


def test_bf16_autocast_step_runs_on_cpu():
    tr = _trainer(precision="bf16")
    dtypes = []
    first = next(m for m in tr.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    x, y = _batch()
    before = [p.detach().clone() for p in tr.model.parameters()]
    losses = [tr.train_step(x, y)["loss"] for _ in range(20)]
    assert dtypes[0] == torch.bfloat16  # the forward really ran in bf16
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))
    assert losses[-1] < losses[0]  # and it still learns


def test_bf16_loss_close_to_fp32():
    """Same weights and masks: bf16 autocast changes the loss by < 2% (bf16 has 8 mantissa bits)."""
    x, y = _batch()
    parts = {}
    for precision in ("fp32", "bf16"):
        tr = _trainer(precision=precision)
        torch.manual_seed(3)
        parts[precision] = tr.loss(x, y)[1]["data"]
    assert parts["bf16"] == pytest.approx(parts["fp32"], rel=0.02)


def test_fp16_on_cpu_is_rejected():
    with pytest.raises(ConfigError, match="fp16"):
        build_config({"train": {"precision": "fp16", "device": "cpu"}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on CPU-only machines")
def test_cuda_request_without_cuda_fails_cleanly(tmp_path, capsys):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert (
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--device", "cuda"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDA is not available" in err[0]
    assert not (tmp_path / "run").exists()


# -- CUDA only -------------------------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_step(precision):
    tr = _trainer("cuda", precision=precision)
    x, y = _batch("cuda")
    losses = [tr.train_step(x, y)["loss"] for _ in range(20)]
    assert losses[-1] < losses[0]
    assert (tr.scaler is not None) == (precision == "fp16")
    assert all(p.is_cuda and p.dtype == torch.float32 for p in tr.model.parameters())


@pytest.mark.gpu
@needs_cuda
def test_cuda_run_uses_pinned_memory_and_resumes(tmp_path):
    from bnn_nested.data import load_dataset
    from bnn_nested.runs.build import make_loaders
    from bnn_nested.runs.run import resume_run, train_run
    from bnn_nested.training.checkpoint import load_checkpoint, save_checkpoint

    cfg = build_config({**TINY, "train": {"epochs": 2, "device": "cuda", "precision": "bf16"}})
    train, _, _ = make_loaders(cfg, load_dataset(cfg.data), device="cuda")
    assert train.pin_memory
    run = train_run(cfg, tmp_path / "run", quiet=True)
    state = load_checkpoint(run / "checkpoint.pt")
    assert state["model"]["net.features.0.weight"].device.type == "cpu"  # loads anywhere
    state.pop("format_version")
    state["complete"] = False
    save_checkpoint(run / "checkpoint.pt", state)
    # a finished state marked unfinished: resume trains no more epochs but must load on CUDA
    resume_run(run, quiet=True, device="cuda")
