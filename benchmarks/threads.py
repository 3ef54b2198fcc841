"""Training-step time against torch's thread count for the demo MLP, LeNet and VGG-11 (wide) at
batch 64 and 256, with the configs' own models, samplers and regularizers (random inputs of the
data sets' shapes; no data is loaded).

Every (model, batch, threads) cell is timed once per round and the rounds run interleaved
(round-robin over all cells), so that load from other processes affects every cell alike; the
table gives the median step and its ratio to the 1-thread step of the same model and batch.

``--determinism`` instead trains the demo (``configs/digits_mlp.yaml``, ``--epochs`` epochs) twice
at each thread count and prints the largest absolute weight difference between every pair of runs:
0 between two runs at the same count (bit-identical), not 0 across counts.

Usage:
    .venv/bin/python benchmarks/threads.py [--threads 1,2,4] [--rounds 7] [--quick]
    .venv/bin/python benchmarks/threads.py --determinism [--threads 1,2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from bnn_nested.config import load_config
from bnn_nested.models.registry import build_model
from bnn_nested.training.samplers import build_sampler
from bnn_nested.training.trainer import Trainer

ROOT = os.path.join(os.path.dirname(__file__), "..")
#: name: (config, input shape, classes)
MODELS = {
    "demo MLP": ("configs/digits_mlp.yaml", (64,), 10),
    "LeNet": ("configs/mnist5k_lenet.yaml", (1, 28, 28), 10),
    "VGG-11 wide": ("configs/cifar10_vgg11wide.yaml", (3, 32, 32), 10),
}


def make_trainer(config: str, shape: tuple[int, ...], classes: int, batch: int) -> Trainer:
    cfg = load_config(os.path.join(ROOT, config), [f"data.batch_size={batch}", "train.device=cpu"])
    torch.manual_seed(0)
    model = build_model(cfg.model, build_sampler(cfg.ordering).ordering_kwargs(), shape, classes)
    return Trainer(model, cfg, n_train=5000, quiet=True)


def determinism(threads: list[int], epochs: int) -> int:
    import tempfile

    from bnn_nested.training.run import load_run, train_run

    weights = {}
    with tempfile.TemporaryDirectory() as tmp:
        for t in threads:
            for rep in (1, 2):
                cfg = load_config(
                    os.path.join(ROOT, "configs/digits_mlp.yaml"),
                    [f"train.epochs={epochs}", f"train.threads={t}"],
                )
                out = train_run(cfg, os.path.join(tmp, f"t{t}_{rep}"), quiet=True)
                weights[(t, rep)] = load_run(out).model.state_dict()
    print(f"\ndemo MLP, {epochs} epochs: largest |weight difference| between two runs\n")
    print("| run A | run B | max abs difference |")
    print("|---|---|---|")
    keys = list(weights)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            diff = max(
                (weights[a][k].double() - weights[b][k].double()).abs().max().item()
                for k in weights[a]
                if weights[a][k].is_floating_point()
            )
            print(f"| {a[0]} thr, run {a[1]} | {b[0]} thr, run {b[1]} | {diff:.3g} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2,4", help="thread counts, comma-separated")
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=7, help="timed steps per cell")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 rounds, no warm-up (a smoke test)")
    ap.add_argument("--determinism", action="store_true", help="weight differences (see above)")
    ap.add_argument("--epochs", type=int, default=2, help="--determinism: epochs per run")
    args = ap.parse_args(argv)
    if args.determinism:
        return determinism([int(t) for t in args.threads.split(",")], args.epochs)
    if args.quick:
        args.rounds, args.warmup = 2, 0
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    names = [m.strip() for m in args.models.split(",")]
    cells = {}
    g = torch.Generator().manual_seed(0)
    for name in names:
        config, shape, classes = MODELS[name]
        for b in batches:
            x = torch.randn(b, *shape, generator=g)
            y = torch.randint(0, classes, (b,), generator=g)
            for t in threads:
                cells[(name, b, t)] = (make_trainer(config, shape, classes, b), x, y, [])
    for i in range(args.warmup + args.rounds):
        for (_, _, t), (trainer, x, y, times) in cells.items():
            torch.set_num_threads(t)
            t0 = time.perf_counter()
            trainer.train_step(x, y)
            dt = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(dt)
    print(
        f"\nmedian training step (ms) of {args.rounds} interleaved rounds; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n"
    )
    print("| model | batch | " + " | ".join(f"{t} thr (ms) | x 1 thr" for t in threads) + " |")
    print("|---|---|" + "---|---|" * len(threads))
    for name in names:
        for b in batches:
            base = statistics.median(cells[(name, b, threads[0])][3])
            row = []
            for t in threads:
                med = statistics.median(cells[(name, b, t)][3])
                row.append(f"{1000 * med:.1f} | {med / base:.2f}")
            print(f"| {name} | {b} | " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
