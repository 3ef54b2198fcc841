"""``bnn-nested cascade RUN``: a width cascade whose threshold is chosen on validation data to reach
a target accuracy (``--target-accuracy``) or to be most accurate within a FLOPs budget
(``--max-flops``), reported on the test split next to every fixed width: accuracy, ECE, conformal
set coverage / size at ``1 - alpha`` and mean FLOPs per example (every stage visited, x MC samples).

Writes ``RUN/cascade.json`` and ``RUN/plots/cascade_acc_vs_flops.png``. Exit status 0, or 1 when
no threshold reaches the target on validation data (the nearest is reported), 2 for bad input.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bnn_nested.cli.common import (
    UsageError,
    add_allow_import_argument,
    parse_widths,
    precheck_scores,
)
from bnn_nested.io import atomic_write_json
from bnn_nested.threads import add_threads_argument, apply_threads


def add_parser(sub) -> None:
    c = sub.add_parser(
        "cascade",
        help="width cascade on calibrated scores, thresholds from a target accuracy or FLOPs budget",
        description="Run the narrowest width, escalate uncertain examples; exit 0 if the target "
        "is met on validation data, 1 if not (nearest reported), 2 on bad input.",
    )
    c.add_argument("run", help="run directory written by `bnn-nested train`")
    c.add_argument("--target-accuracy", type=float, help="validation accuracy to reach, in [0, 1]")
    c.add_argument("--max-flops", type=float, help="mean FLOPs per example (x MC samples), > 0")
    c.add_argument("--widths", type=parse_widths, default=None, help="stages, e.g. 0.25,0.5,1")
    c.add_argument("--samples", type=int, default=None, help="Monte-Carlo samples per stage")
    c.add_argument(
        "--score",
        default="msp",
        help="uncertainty score: msp (1 - max p, default), entropy, mutual_information, "
        "expected_entropy, or one registered by a module in the run's imports",
    )
    c.add_argument("--alpha", type=float, default=0.1, help="conformal level 1 - alpha (0, 1)")
    c.add_argument(
        "--no-temperature", action="store_true", help="ignore the run's stored temperatures"
    )
    c.add_argument("--no-plots", action="store_true", help="skip the PNG plot")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    add_threads_argument(c)
    add_allow_import_argument(c)
    c.set_defaults(handler=run)


def run(args) -> int:
    from bnn_nested.deploy.cascade import (
        cascade_plot,  # deferred: imports torch; --help and usage errors stay fast
    )
    from bnn_nested.runs.deployment import (
        cascade_run,  # deferred: imports torch; --help and usage errors stay fast
    )

    if (args.target_accuracy is None) == (args.max_flops is None):
        raise UsageError("give exactly one of --target-accuracy and --max-flops")
    if args.target_accuracy is not None and not 0.0 <= args.target_accuracy <= 1.0:
        raise UsageError(f"--target-accuracy must be in [0, 1], got {args.target_accuracy}")
    if args.max_flops is not None and not (math.isfinite(args.max_flops) and args.max_flops > 0):
        raise UsageError(f"--max-flops must be a finite number > 0, got {args.max_flops}")
    if args.samples is not None and args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"--alpha must be in (0, 1), got {args.alpha}")
    if args.widths is not None and len(set(args.widths)) != len(args.widths):
        raise UsageError(f"--widths must be distinct, got {args.widths}")
    if args.widths is not None and len(args.widths) < 2:
        raise UsageError(
            f"--widths: a cascade needs at least two widths to escalate between, got "
            f"{args.widths[0]:g}; for one width see `bnn-nested evaluate --widths {args.widths[0]:g}`"
        )
    precheck_scores([args.score], "--score", args.allow_import, probabilities=True)
    if args.score == "mutual_information" and args.samples == 1:
        raise UsageError("--score mutual_information needs --samples > 1")
    apply_threads(args.threads)
    rep = cascade_run(
        args.run,
        args.widths,
        args.samples,
        args.target_accuracy,
        args.max_flops,
        args.score,
        args.alpha,
        temperature=not args.no_temperature,
        allow_import=args.allow_import,
    )
    run_dir = Path(args.run)
    atomic_write_json(run_dir / "cascade.json", rep.to_dict())
    if not args.no_plots:
        cascade_plot(rep, run_dir / "plots" / "cascade_acc_vs_flops.png", "cascade vs fixed widths")
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2))
        return 0 if rep.choice.feasible else 1
    ch = rep.choice
    temps = rep.meta["temperatures"]
    print(
        f"test split, {rep.meta['samples']} sample(s), score {rep.meta['score']}, temperatures "
        + ", ".join(f"{w}: {t:.3f}" for w, t in temps.items())
    )
    print(rep.table())
    status = "" if ch.feasible else "NOT MET on validation data, nearest: "
    print(
        f"threshold {ch.threshold:.4g} on every stage ({ch.rule}): {status}val accuracy "
        f"{ch.val_accuracy:.4f} at {ch.val_flops:.4g} FLOPs/example; exits per stage "
        + ", ".join(f"{rep.cascade[f'exit/{i}']:.2f}" for i in range(len(rep.widths)))
    )
    print(f"written: {run_dir / 'cascade.json'}")
    return 0 if ch.feasible else 1
