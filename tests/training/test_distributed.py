"""Data-parallel training on ``DistributedDataParallel``: 2 CPU processes (gloo) reproduce a
single-process run with the same global batch for the ``vou``, ``nested_dropout`` and ``sandwich``
samplers; ordering masks agree on every rank at every step; only rank 0 writes; a 2-process run
killed with SIGKILL and resumed under torchrun ends with exactly the uninterrupted run's weights."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.nn.ordering_unit import OrderingUnit
from bnn_nested.runs.build import seed_everything
from bnn_nested.training.distributed import (
    DistContext,
    EpochSampler,
    gather_digests,
    setup_distributed,
)
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import NonFiniteLossError, Trainer
from tests.zoo import mlp

N, GLOBAL_BATCH, EPOCHS = 128, 32, 3  # N divisible by the global batch: no padded last batch
#: stated tolerance: the 2-process run averages two half-batch means (a different summation order)
ATOL = 1e-5


def _cfg(sampler: str = "vou"):
    return build_config(
        {
            "seed": 7,
            "data": {"batch_size": GLOBAL_BATCH},
            "model": {"hidden": [16], "groups": 4, "kept": 1},
            # relaxed masks at temperature 0.7 (the default, hard masks, runs in the torchrun tests)
            "ordering": {"sampler": sampler, "temperature": 0.7, "hard": False},
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
    model = mlp(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
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


def _threads() -> int:
    """OS threads of this process (gloo's worker and transport threads included)."""
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


def _worker(rank: int, world: int, tmp: str, sampler: str, with_run: bool) -> None:
    torch.set_num_threads(1)
    before = _threads()
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
    if not with_run:
        # the trainer is still alive: after fit() it must hold no reference to the group, so
        # destroying the group frees it and joins gloo's threads now, not at interpreter exit
        dist.destroy_process_group()
        gc.collect()
        (Path(tmp) / f"threads{rank}.json").write_text(json.dumps([before, _threads()]))
        return
    # the flags: a stop asked on rank 0 alone stops both; a NaN loss on rank 1 alone raises on both
    x, y = _dataset().tensors
    x, y = x[rank * 16 : rank * 16 + 16], y[rank * 16 : rank * 16 + 16]
    trainer._stop_requested = rank == 0
    trainer.train_step(x, y)
    agreed = {"stop": trainer._stop_requested}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    try:
        trainer.train_step(x * float("nan") if rank == 1 else x, y)
        agreed["nan"] = "no error"
    except NonFiniteLossError as err:
        agreed["nan"] = str(err)
    after = trainer.model.state_dict()
    agreed["untouched"] = all(torch.equal(before[k], after[k]) for k in before)
    (Path(tmp) / f"flags{rank}.json").write_text(json.dumps(agreed))
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


#: ordering masks drawn per step (mlp([16]): one ordering unit; sandwich draws none)
MASKS_PER_STEP = {"vou": 1, "nested_dropout": 1, "sandwich": 0}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["vou", "nested_dropout", "sandwich"])
def test_two_cpu_processes_match_one(tmp_path, sampler):
    with_run = sampler == "vou"  # the run-directory check once
    mp.spawn(_worker, args=(2, str(tmp_path), sampler, with_run), nprocs=2, join=True)
    # masks: identical on both ranks at every step (one mask per ordering unit per step)
    masks = json.loads((tmp_path / "masks0.json").read_text())
    per_step = MASKS_PER_STEP[sampler]
    # plus the first step's probe for unused parameters, drawn with the RNGs put back after it:
    # the same mask as the first step's
    assert len(masks) == (EPOCHS * (N // GLOBAL_BATCH) + 1) * per_step
    assert masks[:per_step] == masks[per_step : 2 * per_step]
    assert all(len(set(d)) == 1 for d in masks)
    if not with_run:  # no communication thread outlives the group (docs/multiprocess.md)
        for rank in (0, 1):
            before, after = json.loads((tmp_path / f"threads{rank}.json").read_text())
            assert after == before, f"rank {rank}: {after - before} thread(s) left after destroy"
    # replicas agree exactly; they match one process with the same global batch within ATOL
    m0 = torch.load(tmp_path / "model0.pt", weights_only=True)
    m1 = torch.load(tmp_path / "model1.pt", weights_only=True)
    assert all(torch.equal(m0[k], m1[k]) for k in m0)
    single = _train(_cfg(sampler), DistContext()).model.state_dict()
    start = mlp(6, 3, [16], 4, 1, build_sampler(_cfg().ordering).ordering_kwargs())
    moved = max(float((single[k] - start.state_dict()[k]).abs().max()) for k in single)
    assert moved > 1e-2  # training changed the weights, so agreement is not trivial
    for k in single:
        torch.testing.assert_close(m0[k], single[k], atol=ATOL, rtol=0)
    if not with_run:
        return
    for rank in (0, 1):
        agreed = json.loads((tmp_path / f"flags{rank}.json").read_text())
        assert agreed["stop"] is True and agreed["untouched"] is True
        assert agreed["nan"].startswith("loss became non-finite on 1 rank(s)")
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


# -- exact resume of a 2-process run killed with SIGKILL (the real CLI under torchrun) ---------
ROOT = Path(__file__).parents[2]
#: The CLI, each step slowed by 20 ms so the parent can kill the job between checkpoints.
CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    torch.set_num_threads(1)
    from bnn_nested.training.trainer import NonFiniteLossError, Trainer
    step = Trainer.train_step
    def slow(self, x, y):
        time.sleep(0.02)
        return step(self, x, y)
    Trainer.train_step = slow
    from bnn_nested.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _torchrun(script: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.Popen(
        [*cmd, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _descendants(pid: int) -> list[int]:
    """Process ids below ``pid`` (from ``/proc``): torchrun starts its ranks in sessions of their
    own, so killing its process group would not reach them."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        here = todo.pop()
        kids = [c for c, p in parent.items() if p == here]
        out += kids
        todo += kids
    return out


#: DDP's warning when asked to find unused parameters and none is unused (printed by every rank
#: on every torchrun run before issue 28): the trainer now asks only when a parameter is unused
DDP_UNUSED_WARNING = "find_unused_parameters=True was specified"


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert DDP_UNUSED_WARNING not in err and "find_unused_parameters" not in err, err[-2000:]


def _small_digits_config(tmp_path: Path, ordering: dict | None = None, epochs: int = 2) -> Path:
    """A 2-epoch digits MLP config (checkpoints every 5 steps) for the torchrun tests, written to
    ``tmp_path / "cfg.yaml"``; ``ordering`` is added when given."""
    cfg = {
        "seed": 5,
        "data": {"name": "digits", "batch_size": 64},
        "model": {"hidden": [16], "groups": 4, "kept": 1},
        "train": {"epochs": epochs, "lr": 0.003, "checkpoint_every_steps": 5},
        "eval": {"widths": [0.5, 1.0]},
    }
    if ordering is not None:
        cfg["ordering"] = ordering
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds torchrun's ranks in /proc")
@pytest.mark.parametrize("sampler", ["vou", "nested_dropout", "sandwich"])
def test_two_process_sigkill_then_resume_is_bit_identical(tmp_path, sampler):
    cfg = _small_digits_config(tmp_path, {"sampler": sampler, "sandwich_random": 1})
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    common = ("--quiet",)
    _finish(
        _torchrun(script, "train", "--config", str(cfg), "--out", str(tmp_path / "ref"), *common)
    )
    run = tmp_path / "killed"
    proc = _torchrun(script, "train", "--config", str(cfg), "--out", str(run), *common)
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    for pid in [*_descendants(proc.pid), proc.pid]:  # the ranks first, then torchrun
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    partial = torch.load(run / "checkpoint.pt", weights_only=True)
    ref = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=True)
    assert not partial["complete"] and partial["step"] < ref["step"]  # killed mid-run
    assert partial["world_size"] == 2
    _finish(_torchrun(script, "train", "--resume", str(run), *common))
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final["complete"] and final["step"] == ref["step"]
    for k in ref["model"]:
        assert torch.equal(final["model"][k], ref["model"][k]), k
    assert final["history"] == ref["history"]


# -- Ctrl-C under torchrun (issue 28) -----------------------------------------------------------
#: The CLI with each step's stop/NaN all-reduce awaited 50 ms late: a SIGINT then lands while the
#: flags are in flight (during the backward pass), where the old code lost it; each rank writes its
#: exit status to ``exit<RANK>`` (torchrun does not report its workers' statuses after a signal).
CHILD_SIGINT = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    from bnn_nested.training.distributed import StepFlags
    wait = StepFlags.wait
    def late(self):
        time.sleep(0.05)
        return wait(self)
    StepFlags.wait = late
    from bnn_nested.cli.main import main
    code = main(sys.argv[2:])
    open(os.path.join(sys.argv[1], "exit" + os.environ["RANK"]), "w").write(str(code))
    sys.exit(code)
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "killpg"), reason="sends SIGINT to a process group")
def test_ctrl_c_under_torchrun_stops_every_rank_and_resumes(tmp_path):
    """A terminal's Ctrl-C reaches torchrun's process group only (torchrun starts its ranks in
    sessions of their own); torchrun forwards SIGINT to every rank. The ranks must stop at the
    same step (not train on to the last epoch), rank 0 alone prints one line, every rank exits
    130, no traceback comes from bnn_nested, and the run resumes to completion."""
    epochs = 2
    cfg = _small_digits_config(tmp_path, epochs=epochs)
    script = tmp_path / "child.py"
    script.write_text(CHILD_SIGINT)
    run = tmp_path / "run"
    args = (str(script), str(tmp_path), "train")
    proc = _torchrun(
        *args, "--config", str(cfg), "--out", str(run), "--quiet", start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    _, err = proc.communicate(timeout=60)
    # every rank stopped on the signal and exited 130 (torchrun itself exits 1: see README)
    assert [(tmp_path / f"exit{r}").read_text() for r in (0, 1)] == ["130", "130"], err[-3000:]
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    steps_per_epoch = -(-1167 // 64)  # digits' 1,167 training examples, padded to the world size
    assert not state["complete"] and state["step"] < epochs * steps_per_epoch, err[-3000:]
    ours = [ln for ln in err.splitlines() if ln.startswith("bnn-nested")]
    assert len(ours) == 1, err[-3000:]
    assert ours[0].startswith(f"bnn-nested: interrupted after step {state['step']} ")
    assert f"--nproc_per_node=2 -m bnn_nested train --resume {run}" in ours[0]
    assert "bnn_nested/" not in "".join(ln for ln in err.splitlines() if 'File "' in ln)
    assert "find_unused_parameters" not in err  # DDP's warning, once per rank, before issue 28
    # the run directory is consistent: --resume under torchrun finishes it
    _finish(_torchrun(*args, "--resume", str(run), "--quiet"))
    final = torch.load(run / "checkpoint.pt", weights_only=True)
    assert final["complete"] and final["step"] == epochs * steps_per_epoch
    assert [h["epoch"] for h in final["history"]] == list(range(1, epochs + 1))


# -- DDP's unused-parameter search only where a parameter is unused (issue 28) -------------------
def test_unused_parameters_names_them_and_puts_everything_back():
    from bnn_nested.training.distributed import unused_parameters

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    net.spare = torch.nn.Linear(2, 2)  # never called
    net.spare.bias.requires_grad_(False)  # not trainable: not reported
    x = torch.randn(8, 4)
    stats = [b.clone() for b in net.buffers()]
    torch.manual_seed(3)
    expected = torch.rand(1)
    torch.manual_seed(3)

    def loss():
        return net[2](net[1](net[0](x * torch.rand(1)))).sum()  # draws from the global RNG

    assert unused_parameters(net, loss) == ["spare.weight"]
    assert torch.equal(torch.rand(1), expected)  # the RNG draw was put back
    assert all(torch.equal(a, b) for a, b in zip(stats, net.buffers()))  # BN statistics too
    assert all(p.grad is None for p in net.parameters())
    del net.spare
    assert unused_parameters(net, loss) == []


def _unused_worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/pg", rank=rank, world_size=2)
    ctx = setup_distributed("cpu")
    import bnn_nested.training.trainer as trainer_module

    asked = []
    original = trainer_module.data_parallel

    def recording(module, ctx, find_unused_parameters=True):
        asked.append(find_unused_parameters)
        return original(module, ctx, find_unused_parameters)

    trainer_module.data_parallel = recording
    cfg = _cfg("vou")
    results = {}
    for spare in (False, True):
        seed_everything(cfg.seed)
        model = mlp(6, 3, [16], 4, 1, build_sampler(cfg.ordering).ordering_kwargs())
        if spare:  # a parameter no pass uses (e.g. a part of a user's network left out)
            model.spare = torch.nn.Linear(2, 2)
        data = _dataset()
        loader = DataLoader(data, batch_size=16, sampler=EpochSampler(data, cfg.seed, rank, 2))
        trainer = Trainer(model, cfg, n_train=N, quiet=True, dist=ctx)
        trainer.fit(loader, epochs=1)  # DDP raises on the second step if it waits for `spare`
        results[str(spare)] = trainer.step
    (Path(tmp) / f"unused{rank}.json").write_text(json.dumps({"asked": asked, **results}))
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_searches_for_unused_parameters_only_when_some_are(tmp_path):
    mp.spawn(_unused_worker, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"unused{rank}.json").read_text())
        assert got == {"asked": [False, True], "False": 4, "True": 4}
