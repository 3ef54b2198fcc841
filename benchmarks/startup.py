"""Start-up time of the command line: ``--help`` and a config error arrive before torch is imported.

Times, interleaved over ``--repeats`` rounds, the wall time of fresh processes running
``bnn-nested --help``, ``bnn-nested train --help``, ``bnn-nested train`` with a config naming an
unknown key (exit 2), and, as the reference, ``python -c "import torch"``. Prints medians and
the inter-quartile range (ms) and whether torch was imported (``python -X importtime``).

Run: ``.venv/bin/python benchmarks/startup.py --repeats 10``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True)
    return time.perf_counter() - t0


def _imports_torch(cmd: list[str]) -> bool:
    out = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, text=True)
    return any(line.rstrip().endswith("| torch") for line in out.stderr.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        bad = Path(tmp) / "bad.yaml"
        bad.write_text("model:\n  nme: mlp\n")
        cases = {
            "bnn-nested --help": [py, "-m", "bnn_nested", "--help"],
            "bnn-nested train --help": [py, "-m", "bnn_nested", "train", "--help"],
            "config error (exit 2)": [
                py,
                "-m",
                "bnn_nested",
                "train",
                "--config",
                str(bad),
                "--out",
                f"{tmp}/r",
            ],
            'python -c "import torch"': [py, "-c", "import torch"],
        }
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, cmd in cases.items():
                times[name].append(_wall(cmd) * 1e3)
        print("| command | median ms | IQR ms | imports torch |\n|---|---:|---:|---|")
        for name, cmd in cases.items():
            xs = sorted(times[name])
            q = statistics.quantiles(xs, n=4)
            print(
                f"| {name} | {statistics.median(xs):.0f} | {q[2] - q[0]:.0f} | "
                f"{'yes' if _imports_torch(cmd) else 'no'} |"
            )


if __name__ == "__main__":
    main()
