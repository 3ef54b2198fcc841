"""Does a 2-process CPU run end cleanly, every time, beside a busy neighbour? (issue: "right every
time"; docs/multiprocess.md, "Clean exit").

Runs the README's command ``torchrun --nproc_per_node=2 -m bnn_nested train --config
configs/digits_mlp.yaml --out DIR --device cpu`` ``--runs`` times while a process of its own keeps
one core busy, and prints each exit status and whether the run's final outputs exist. The abort it
guards against (``terminate called without an active exception`` at exit) came from gloo threads
kept alive past ``destroy_process_group`` by the trainer's DDP wrapper and torn down during
interpreter shutdown.

    python benchmarks/ddp_exit.py --runs 20
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spin(stop_at: float) -> None:  # the busy neighbour
    while time.time() < stop_at:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=30, help="train.epochs (README: 30)")
    args = ap.parse_args(argv)
    neighbour = mp.Process(target=_spin, args=(time.time() + 24 * 3600,), daemon=True)
    neighbour.start()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    failed = 0
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "ddp2"
                cmd = [
                    *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                    *("--nproc_per_node=2", "-m", "bnn_nested", "train"),
                    *("--config", str(ROOT / "configs/digits_mlp.yaml"), "--out", str(out)),
                    *("--device", "cpu", "--quiet", "--set", f"train.epochs={args.epochs}"),
                ]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
                complete = (out / "keep_probs.png").is_file()
                aborted = "terminate called" in p.stderr
                ok = p.returncode == 0 and complete and not aborted
                failed += not ok
                print(
                    f"run {i + 1:2d}: exit {p.returncode}, outputs {'complete' if complete else 'MISSING'}"
                    f"{', ABORT at exit' if aborted else ''}, {time.perf_counter() - t0:.0f} s",
                    flush=True,
                )
                if not ok:  # what went wrong, from the ranks' own words
                    print("  " + "\n  ".join(p.stderr.strip().splitlines()[-8:]), flush=True)
    finally:
        neighbour.terminate()
    print(f"{args.runs - failed} of {args.runs} runs exited 0 with complete outputs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
