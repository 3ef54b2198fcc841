"""Step time of data-parallel training on 1 vs 2 CPU processes (gloo), same global batch, for two
source trees (e.g. the hand-written all-reduce before DDP, and this tree), in one interleaved run.

Every launch is ``torchrun --standalone --nproc_per_node=P`` of this script in worker mode with
``PYTHONPATH=TREE`` (so ``bnn_nested`` is imported from that tree); the worker trains a
nestified ``mlp`` (groups 16, kept 1) on random digits-shaped data (64 inputs, 10 classes) through ``Trainer.train_step``
for each sampler, and rank 0 prints the median wall time per step. Launches are interleaved:
``for repeat: for tree: for P:``. Reported: per (tree, sampler, P) the median over repeats of the
per-launch medians, the spread (min-max over repeats), and the 2-process / 1-process ratio.

    .venv/bin/python benchmarks/ddp_step.py --tree before=/tmp/before --tree after=.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SAMPLERS = ("vou", "sandwich")


def worker(args: argparse.Namespace) -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import bnn_nested
    from bnn_nested.config import build_config
    from bnn_nested.models import build_model
    from bnn_nested.training.distributed import EpochSampler, setup_distributed
    from bnn_nested.training.samplers import build_sampler
    from bnn_nested.training.trainer import Trainer

    torch.set_num_threads(1)
    ctx = setup_distributed("cpu")
    n = args.global_batch * (args.warmup + args.steps)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))
    result = {"tree": str(Path(bnn_nested.__file__).parents[1]), "world": ctx.world_size}
    for sampler in SAMPLERS:
        cfg = build_config(
            {
                "seed": 0,
                "data": {"batch_size": args.global_batch},
                "model": {"hidden": args.hidden, "groups": 16, "kept": 1},
                "ordering": {"sampler": sampler},
                "train": {"epochs": 1},
            }
        )
        torch.manual_seed(0)
        kw = build_sampler(cfg.ordering).ordering_kwargs()
        model = build_model(cfg.model, kw, (64,), 10)
        loader = DataLoader(
            data,
            batch_size=args.global_batch // ctx.world_size,
            sampler=EpochSampler(data, 0, ctx.rank, ctx.world_size),
        )
        trainer = Trainer(model, cfg, n_train=n, quiet=True, dist=ctx)
        times = []
        for i, (x, y) in enumerate(loader):
            ctx.barrier()
            t0 = time.perf_counter()
            trainer.train_step(x, y)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        result[sampler] = statistics.median(times)
    if ctx.is_main:
        print("RESULT " + json.dumps(result), flush=True)
    ctx.close()


def launch(tree: Path, procs: int, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={procs}", __file__, "--worker"]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--global-batch", str(args.global_batch), "--hidden", *map(str, args.hidden)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    res = json.loads(line[len("RESULT ") :])
    if Path(res["tree"]).resolve() != tree.resolve():
        raise RuntimeError(f"imported bnn_nested from {res['tree']}, not {tree}")
    return res


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tree", action="append", default=[], help="NAME=PATH of a source tree")
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per sampler and launch")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--global-batch", type=int, default=128)
    p.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return ""
    trees = dict(t.split("=", 1) for t in args.tree) or {"this": "."}
    got: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(args.repeats):
        for name, path in trees.items():
            for procs in args.procs:
                res = launch(Path(path), procs, args)
                for s in SAMPLERS:
                    got.setdefault((name, s, procs), []).append(res[s])
    lines = [
        f"global batch {args.global_batch}, mlp(64, {args.hidden}, 10), "
        f"{args.steps} timed steps x {args.repeats} interleaved launches, OMP_NUM_THREADS=1",
        "",
        "| tree | sampler | processes | step ms (median) | spread (min-max) | vs 1 process |",
        "|---|---|---|---|---|---|",
    ]
    for name in trees:
        for s in SAMPLERS:
            base = statistics.median(got[(name, s, args.procs[0])])
            for procs in args.procs:
                v = got[(name, s, procs)]
                med = statistics.median(v)
                lines.append(
                    f"| {name} | {s} | {procs} | {1e3 * med:.2f} | "
                    f"{1e3 * min(v):.2f}-{1e3 * max(v):.2f} | {med / base:.2f} |"
                )
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
