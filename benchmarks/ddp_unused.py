"""Which ``DistributedDataParallel`` settings each sampler and model allow: 2 gloo ranks train one
short epoch (4 steps of 4 + 4 random examples) with the trainer's DDP wrapper replaced by one with
``find_unused_parameters=False`` (``plain``), ``=True`` (``unused``) or ``static_graph=True``
(``static``); prints ``ok`` or the first error line per combination.

    TORCH_DISTRIBUTED_DEBUG=INFO .venv/bin/python benchmarks/ddp_unused.py \\
        --models mlp lenet resnet --samplers vou nested_dropout sandwich --modes plain static

(``TORCH_DISTRIBUTED_DEBUG=DETAIL`` makes torch 2.14.1's DDP constructor crash with a segmentation
fault on gloo, even for a bare ``nn.Linear``; ``INFO`` works.)
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from bnn_nested.config import build_config
from bnn_nested.models.registry import build_model
from bnn_nested.training import trainer as trainer_module
from bnn_nested.training.distributed import EpochSampler, setup_distributed
from bnn_nested.training.samplers import build_sampler

SHAPES = {"mlp": (6,), "lenet": (1, 28, 28), "resnet": (3, 32, 32)}
MODEL = {
    "mlp": {"hidden": [16], "kept": 1},
    "lenet": {"hidden": [8, 16, 32], "norm": "batch"},
    "resnet": {"variant": "20", "norm": "batch"},
}


def worker(rank: int, tmp: str, model: str, sampler: str, mode: str, weights: str) -> None:
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=40)
    pg = f"file://{tmp}/pg"
    dist.init_process_group("gloo", init_method=pg, rank=rank, world_size=2, timeout=timeout)
    ctx = setup_distributed("cpu")

    def wrap(module, ctx, *_):  # the trainer also passes its own find_unused_parameters
        kw = {"find_unused_parameters": mode == "unused", "static_graph": mode == "static"}
        return DistributedDataParallel(module, forward_sync_buffers=False, **kw)

    trainer_module.data_parallel = wrap
    mc = {"name": model, "groups": 4, "weights": weights, **MODEL[model]}
    cfg = build_config(
        {
            "seed": 1,
            "data": {"batch_size": 8},
            "model": mc,
            "ordering": {"sampler": sampler},
            "train": {"epochs": 1},
        }
    )
    torch.manual_seed(0)
    shape = SHAPES[model]
    net = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, 3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, *shape, generator=g), torch.randint(0, 3, (32,), generator=g)
    data = TensorDataset(x, y)
    loader = DataLoader(data, batch_size=4, sampler=EpochSampler(data, 0, rank, 2))
    trainer = trainer_module.Trainer(net, cfg, n_train=32, quiet=True, dist=ctx)
    try:
        trainer.fit(loader, epochs=1)
        res = "ok"
    except Exception as err:  # report, do not crash: the point is which settings fail
        res = "FAIL " + str(err).replace("\n", " ")[:300]
    if rank == 0:
        (Path(tmp) / "res").write_text(res)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["mlp"], choices=sorted(SHAPES))
    p.add_argument("--samplers", nargs="+", default=["vou", "nested_dropout", "sandwich"])
    p.add_argument("--modes", nargs="+", default=["plain"], choices=["plain", "unused", "static"])
    p.add_argument("--weights", nargs="+", default=["point"], choices=["point", "gaussian"])
    args = p.parse_args(argv)
    for model in args.models:
        for sampler in args.samplers:
            for mode in args.modes:
                for weights in args.weights:
                    with tempfile.TemporaryDirectory() as tmp:
                        try:
                            mp.spawn(worker, args=(tmp, model, sampler, mode, weights), nprocs=2)
                            res = (Path(tmp) / "res").read_text()
                        except Exception as err:
                            res = "CRASH " + str(err).splitlines()[-1][:300]
                    print(model, sampler, mode, weights, "->", res, flush=True)


if __name__ == "__main__":
    main()
