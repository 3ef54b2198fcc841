"""Data-parallel training on ``torch.distributed`` (gloo on CPU, NCCL on CUDA).

Launch with ``torchrun --nproc_per_node=N -m bnn_nested train ...``; ``torchrun`` sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, which :func:`setup_distributed`
reads. Design (docs/multiprocess.md):

* every rank seeds the global RNGs with the same seed, so the Downhill ordering masks (drawn from
  the global torch RNG once per mini-batch) and the sandwich widths (drawn from the trainer's
  generator) are identical on every rank at every step: all ranks train the same sub-network;
* each rank reads its own shard of the epoch's permutation (:class:`EpochSampler`, a
  ``DistributedSampler`` whose order is a function of ``(seed, epoch)`` only);
* gradients are averaged by ``torch.nn.parallel.DistributedDataParallel`` (:func:`data_parallel`)
  wrapping one pass of the objective (:class:`~bnn_nested.training.objective.PassLoss`): each pass
  of a step runs its forward and backward separately, all but the last inside ``no_sync()`` (the
  gradients accumulate locally), the last synchronised, so DDP's bucketed all-reduces overlap with
  that backward pass; one small all-reduce of two flags per step (:class:`StepFlags`) carries the
  "stop" (SIGINT) and "non-finite loss" flags so all ranks stop at the same step;
* ``data.batch_size`` is the *global* batch (each rank takes ``batch_size / world_size``) and the
  KL is scaled by the global training-set size, so a run on N processes computes the same updates
  as a single-process run, up to floating-point summation order;
* only rank 0 writes files.

Example::

    ctx = setup_distributed("cpu")          # single process: world_size 1, no process group
    sampler = EpochSampler(train_set, seed=0, rank=ctx.rank, world_size=ctx.world_size)
"""

from __future__ import annotations

import gc
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from bnn_nested.nn.utils import traceless


@dataclass
class DistContext:
    """Where this process sits in the job. ``world_size == 1`` means no process group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when setup_distributed created the group (and must close it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files or prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group if this context created it, and free it now.

        ``destroy_process_group`` only unregisters the group; the group object (and gloo's worker
        and transport threads) lives on while anything references it. ``gc.collect()`` frees what
        is left in reference cycles now, while the interpreter is fully alive, instead of during
        interpreter shutdown, where a C++ thread still running aborts the process
        (docs/multiprocess.md, "Clean exit")."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
            gc.collect()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}"
        ) from None


def setup_distributed(device: str | torch.device) -> DistContext:
    """Join the process group described by torchrun's environment, or use an existing one.

    Args:
        device: the resolved device type (``cpu`` or ``cuda``); CUDA ranks use ``cuda:LOCAL_RANK``
            and NCCL, CPU ranks use gloo.

    Returns:
        a :class:`DistContext` (``world_size == 1`` for a plain single-process run).
    """
    device = torch.device(device)
    if dist.is_available() and dist.is_initialized():
        rank, world, owns = dist.get_rank(), dist.get_world_size(), False
    elif env_world_size() > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        rank, world, owns = dist.get_rank(), dist.get_world_size(), True
    else:
        return DistContext(device=device)
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    return DistContext(rank, world, local, device, owns)


class EpochSampler(DistributedSampler):
    """Shuffled indices of one rank whose order depends only on ``(seed, epoch)``.

    A ``DistributedSampler`` (``randperm`` seeded with ``seed + epoch``, padded to a multiple of
    ``world_size``, rank ``r`` takes positions ``r, r + W, ...``) plus :meth:`set_start`, which skips
    the first ``start`` indices of the epoch, so a run resumed in the middle of an epoch sees exactly
    the batches the uninterrupted run would have seen. With ``world_size=1`` it is a plain seeded
    shuffle.

    Example::

        s = EpochSampler(ds, seed=0); s.set_epoch(3); s.set_start(128)
        loader = DataLoader(ds, batch_size=64, sampler=s)
    """

    def __init__(self, dataset: Dataset, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of this rank's share of the current epoch."""
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(self.num_samples - self.start, 0)


def data_parallel(
    module: nn.Module, ctx: DistContext, find_unused_parameters: bool = True
) -> DistributedDataParallel:
    """``module`` wrapped in ``DistributedDataParallel`` for the ranks of ``ctx``.

    * ``find_unused_parameters``: set it when a synchronised pass may leave trainable parameters
      out of its graph (DDP then marks them ready instead of waiting for them, at the price of one
      traversal of the graph per step). The trainer sets it only when a probe of the first step
      finds such parameters (:func:`unused_parameters`): with it set and none unused, DDP prints a
      warning on every rank. ``static_graph`` fails with the sandwich sampler's ``no_sync()``
      passes (docs/multiprocess.md).
    * ``forward_sync_buffers=False``: batch-norm running statistics stay per rank (they do not
      enter the training loss and a run re-estimates them at the end), so no broadcast per forward
      pass (DDP still syncs them once, at construction).
    * CUDA: ``device_ids=[ctx.device.index]``; CPU (gloo): none.
    """
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(
        module,
        device_ids=ids,
        forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters,
    )


def unused_parameters(module: nn.Module, loss: Callable[[], torch.Tensor]) -> list[str]:
    """Names of ``module``'s trainable parameters that ``loss()``'s graph does not reach.

    ``loss()`` is computed once and differentiated with ``torch.autograd.grad(...,
    allow_unused=True)`` (no ``.grad`` is touched); everything it changes is put back: the global
    RNGs (CPU, and the current CUDA device's) and the module's buffers (batch-norm statistics).

    Example::

        unused_parameters(model, lambda: model(x).sum())   # [] when every parameter is used
    """
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not named:
        return []
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with traceless(module, devices):
        out = loss()
        grads = torch.autograd.grad(out, [p for _, p in named], allow_unused=True)
    return [n for (n, _), g in zip(named, grads) if g is None]


class StepFlags:
    """The stop (SIGINT) and non-finite-loss flags of one step, summed over ranks by one small
    asynchronous all-reduce, started before the step's last backward pass and awaited after it
    (so it overlaps with DDP's gradient all-reduces).

    Example::

        flags = StepFlags(stop=False, non_finite=False, ctx=ctx)   # starts the all-reduce
        loss.backward()
        stop_ranks, bad_ranks = flags.wait()
    """

    def __init__(self, stop: bool, non_finite: bool, ctx: DistContext) -> None:
        dev = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.buf = torch.tensor([float(stop), float(non_finite)], device=dev)
        self.work = dist.all_reduce(self.buf, async_op=True)

    def wait(self) -> tuple[int, int]:
        """``(ranks that asked to stop, ranks whose loss was not finite)``."""
        self.work.wait()
        stop, bad = self.buf.cpu().tolist()
        return int(stop), int(bad)


def tensor_digest(t: torch.Tensor) -> int:
    """A 63-bit hash of a tensor's bytes (to compare tensors across ranks cheaply)."""
    data = t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def gather_digests(t: torch.Tensor) -> list[int]:
    """:func:`tensor_digest` of ``t`` on every rank (an all-gather; a 1-list without a group)."""
    d = torch.tensor([tensor_digest(t)], dtype=torch.int64)
    if not (dist.is_available() and dist.is_initialized()):
        return [int(d)]
    if dist.get_backend() == "nccl":
        d = d.cuda()
    out = [torch.zeros_like(d) for _ in range(dist.get_world_size())]
    dist.all_gather(out, d)
    return [int(x) for x in out]


def check_replicas_agree(model: torch.nn.Module, epoch: int) -> None:
    """All-gather a hash of the parameters; ranks that drifted apart are a bug, not noise."""
    flat = torch.cat([p.detach().reshape(-1).float().cpu() for p in model.parameters()])
    digests = gather_digests(flat)
    if len(set(digests)) > 1:
        raise RuntimeError(
            f"model replicas differ across ranks after epoch {epoch} (hashes {digests})"
        )
