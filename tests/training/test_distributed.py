"""Data-parallel training: 2 CPU processes (gloo) reproduce a single-process run with the same
global batch; ordering masks agree on every rank at every step; only rank 0 writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.models import NestedMLP
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.runs.run import seed_everything
from bnn_nested.training.distributed import (
    DistContext,
    EpochSampler,
    gather_digests,
    setup_distributed,
)
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer

N, GLOBAL_BATCH, EPOCHS = 128, 32, 3  # N divisible by the global batch: no padded last batch
#: stated tolerance: the 2-process run averages two half-batch means (a different summation order)
ATOL = 1e-5


def _cfg(sampler: str = "vou"):
    return build_config(
        {
            "seed": 7,
            "data": {"batch_size": GLOBAL_BATCH},
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "ordering": {"sampler": sampler, "temperature": 0.7},
            "train": {"epochs": EPOCHS, "lr": 0.01},
        }
    )


def _dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def _train(cfg, ctx: DistContext) -> Trainer:
    seed_everything(cfg.seed)  # the same seed on every rank
    model = NestedMLP(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
    data = _dataset()
    sampler = EpochSampler(data, cfg.seed, ctx.rank, ctx.world_size)
    loader = DataLoader(
        data,
        batch_size=GLOBAL_BATCH // ctx.world_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    trainer = Trainer(model, cfg, n_train=N, quiet=True, dist=ctx)
    trainer.fit(loader)
    return trainer


def _worker(rank: int, world: int, tmp: str, sampler: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=world)
    ctx = setup_distributed("cpu")
    digests: list[list[int]] = []
    original = OrderingUnit.sample_mask

    def recording(self, batch=None):  # all-gather a hash of every sampled mask
        m = original(self, batch)
        digests.append(gather_digests(m))
        return m

    OrderingUnit.sample_mask = recording
    trainer = _train(_cfg(sampler), ctx)
    OrderingUnit.sample_mask = original
    torch.save(trainer.model.state_dict(), f"{tmp}/model{rank}.pt")
    (Path(tmp) / f"masks{rank}.json").write_text(json.dumps(digests))
    # the run directory path through train_run: only rank 0 writes files
    from bnn_nested.runs.run import train_run

    cfg = build_config(
        {
            "data": {"batch_size": 64},
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            "train": {"epochs": 1},
        }
    )
    train_run(cfg, f"{tmp}/run", quiet=True)
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["vou"])
def test_two_cpu_processes_match_one(tmp_path, sampler):
    mp.spawn(_worker, args=(2, str(tmp_path), sampler), nprocs=2, join=True)
    # masks: identical on both ranks at every step (one mask per ordering unit per step)
    masks = json.loads((tmp_path / "masks0.json").read_text())
    assert len(masks) == EPOCHS * (N // GLOBAL_BATCH) * 1  # NestedMLP([16]): one ordering unit
    assert all(len(set(d)) == 1 for d in masks)
    # replicas agree exactly; they match one process with the same global batch within ATOL
    m0 = torch.load(tmp_path / "model0.pt", weights_only=True)
    m1 = torch.load(tmp_path / "model1.pt", weights_only=True)
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    single = _train(_cfg(sampler), DistContext()).model.state_dict()
    start = NestedMLP(6, 3, [16], 4, 1, build_sampler(_cfg().ordering).ordering_kwargs())
    moved = max(float((single[k] - start.state_dict()[k]).abs().max()) for k in single)
    assert moved > 1e-2  # training changed the weights, so agreement is not trivial
    for k in single:
        torch.testing.assert_close(m0[k], single[k], atol=ATOL, rtol=0)
    # train_run under 2 ranks: one run directory, written once, complete
    run = tmp_path / "run"
    ours = (".bnn-nested-run", ".bnn-nested.lock")  # the run's marker and lock file
    assert sorted(p.name for p in run.iterdir() if p.name not in ours) == [
        "checkpoint.pt",
        "config.yaml",
        "history.json",
        "keep_probs.json",
        "keep_probs.png",
        "ordering.md",
    ]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["complete"]


def test_epoch_sampler_shards_are_the_global_batches():
    """Rank r's k-th batch of B/2 and the other rank's form the single process's k-th batch of B."""
    data = _dataset()
    single = EpochSampler(data, seed=3)
    r0, r1 = EpochSampler(data, 3, 0, 2), EpochSampler(data, 3, 1, 2)
    for s in (single, r0, r1):
        s.set_epoch(2)
    full, a, b = list(single), list(r0), list(r1)
    for k in range(N // GLOBAL_BATCH):
        half = GLOBAL_BATCH // 2
        got = sorted(a[k * half : (k + 1) * half] + b[k * half : (k + 1) * half])
        assert got == sorted(full[k * GLOBAL_BATCH : (k + 1) * GLOBAL_BATCH])
    # order depends on (seed, epoch) only; set_start skips a prefix
    again = EpochSampler(data, seed=3)
    again.set_epoch(2)
    again.set_start(40)
    assert list(again) == full[40:] and len(again) == N - 40
    single.set_epoch(3)
    assert list(single) != full
