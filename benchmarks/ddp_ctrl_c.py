"""Ctrl-C under torchrun, as a terminal sends it (issue 28): does every rank stop at once?

Runs the README's command ``torchrun --nproc_per_node=2 -m bnn_nested train --config
configs/digits_mlp.yaml --out DIR --device cpu`` ``--runs`` times; once its first checkpoint
exists (``train.checkpoint_every_steps``), sends SIGINT to torchrun's process group (a terminal's
Ctrl-C) and prints, per run: torchrun's exit status, seconds from the signal to the exit, the step
of the checkpoint left (against the run's last step), the lines bnn-nested printed and whether any
traceback passed through bnn_nested's own code.

    python benchmarks/ddp_ctrl_c.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--every", type=int, default=40, help="train.checkpoint_every_steps")
    args = ap.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    import torch  # after the arguments: --help stays fast

    bad = 0
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "ddp2"
            cmd = [
                *(sys.executable, "-m", "torch.distributed.run", "--standalone"),
                *("--nproc_per_node=2", "-m", "bnn_nested", "train"),
                *("--config", str(ROOT / "configs/digits_mlp.yaml"), "--out", str(out)),
                *("--device", "cpu", "--quiet"),
                *("--set", f"train.checkpoint_every_steps={args.every}"),
            ]
            p = subprocess.Popen(
                cmd, env=env, cwd=tmp, stderr=subprocess.PIPE, text=True, start_new_session=True
            )
            while not (out / "checkpoint.pt").exists() and p.poll() is None:
                time.sleep(0.01)
            t0 = time.perf_counter()
            os.killpg(p.pid, signal.SIGINT)
            _, err = p.communicate(timeout=120)
            took = time.perf_counter() - t0
            state = torch.load(out / "checkpoint.pt", weights_only=True)
            ours = [ln for ln in err.splitlines() if ln.startswith("bnn-nested")]
            frames = [ln for ln in err.splitlines() if 'File "' in ln and "bnn_nested" in ln]
            stopped = not state["complete"]
            bad += not (stopped and len(ours) == 1 and not frames)
            print(
                f"run {i + 1}: torchrun exit {p.returncode}, {took:.1f} s after SIGINT, "
                f"{'stopped' if stopped else 'TRAINED ON'} at step {state['step']}, "
                f"{len(ours)} bnn-nested line(s), {len(frames)} bnn_nested traceback frame(s)",
                flush=True,
            )
    print(f"{args.runs - bad} of {args.runs} runs stopped at once with one line and no traceback")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
