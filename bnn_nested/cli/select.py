"""``bnn-nested select RUN``: the best width of a trained run under a compute budget.

Exit status: 0 when a width fits (it is printed with an explanation), **1 when no width satisfies
every constraint** (the nearest option and what it costs are printed), 2 for bad input.
"""

from __future__ import annotations

import json

from bnn_nested.cli.common import (
    UsageError,
    add_allow_import_argument,
    bounded_int,
    note_unfinished,
    parse_widths,
)
from bnn_nested.config import LATENCY_MODES, MAX_BATCH, MAX_SAMPLES
from bnn_nested.threads import add_threads_argument, apply_threads


def add_parser(sub) -> None:
    s = sub.add_parser(
        "select",
        help="best width of a run under FLOPs/latency/params/accuracy/ECE limits",
        description="Best width (highest validation accuracy, ties to the cheaper) satisfying every "
        "constraint. Exit 0 if one fits, 1 if none does, 2 on bad input.",
    )
    s.add_argument("run", help="run directory written by `bnn-nested train`")
    s.add_argument("--max-flops", type=float, help="FLOPs per example (FLOPs = 2 x MACs)")
    s.add_argument("--max-latency-ms", type=float, help="latency of one batch (see --batch-size)")
    s.add_argument("--max-params", type=float, help="parameters of the sliced network")
    s.add_argument("--min-accuracy", type=float, help="validation accuracy in [0, 1]")
    s.add_argument("--max-ece", type=float, help="validation ECE (15 bins by default)")
    s.add_argument("--widths", type=parse_widths, default=None, help="candidate widths")
    s.add_argument("--samples", type=int, default=None, help="Monte-Carlo samples for validation")
    s.add_argument("--batch-size", type=int, default=1, help="batch size for latency (default 1)")
    s.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed passes per width (median and interquartile range shown; default 20)",
    )
    add_threads_argument(s)  # also the threads latency is timed with
    s.add_argument(
        "--latency-mode",
        default=None,
        choices=LATENCY_MODES,
        help="what is timed: sliced (the physically sliced network, default), masked (the "
        "nested model: the full network with a mask), exported (BN folded, channels-last, "
        "micro-batches tuned on CPU) or onnxruntime (the exported width as ONNX under ONNX "
        "Runtime, CPU; needs bnn-nested[onnx]); given without --max-latency-ms, latency is "
        "still measured and shown",
    )
    s.add_argument(
        "--remeasure",
        action="store_true",
        help="time the widths again instead of replaying the latencies cached in "
        "RUN/deploy/profile.json (e.g. after they were measured on a busy machine)",
    )
    s.add_argument(
        "--no-temperature",
        action="store_true",
        help="ignore the run's stored temperatures (fitted by `evaluate --calibrate temperature`)",
    )
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    add_allow_import_argument(s)
    s.set_defaults(handler=run)


def run(args) -> int:
    bounded_int("--samples", args.samples, 1, MAX_SAMPLES)
    bounded_int("--batch-size", args.batch_size, 1, MAX_BATCH)
    bounded_int("--repeats", args.repeats, 3, 10000)
    for flag, value in (("--min-accuracy", args.min_accuracy), ("--max-ece", args.max_ece)):
        if value is not None and not 0.0 <= value <= 1.0:  # also refuses NaN
            raise UsageError(f"{flag} must be in [0, 1], got {value}")
    for flag, value in (
        ("--max-flops", args.max_flops),
        ("--max-latency-ms", args.max_latency_ms),
        ("--max-params", args.max_params),
    ):
        if value is not None and not 0.0 <= value < float("inf"):
            raise UsageError(f"{flag} must be a finite number >= 0, got {value}")
    from bnn_nested.deploy.select import (  # deferred: imports torch; --help and usage errors stay fast
        Constraints,
        select_width,
        selection_dict,
    )
    from bnn_nested.runs.deployment import (
        run_candidates,  # deferred: imports torch; --help and usage errors stay fast
    )
    from bnn_nested.runs.loaded import (
        load_run,  # deferred: imports torch; --help and usage errors stay fast
    )

    if args.latency_mode == "onnxruntime":
        from bnn_nested.deploy.onnx import (
            require_onnx,  # deferred: imports torch; --help and usage errors stay fast
        )

        require_onnx()  # before anything is loaded or cached

    cons = Constraints(
        args.max_flops, args.max_latency_ms, args.max_params, args.min_accuracy, args.max_ece
    )
    threads = apply_threads(args.threads)
    loaded = load_run(args.run, allow_import=args.allow_import)
    note_unfinished(loaded, args.run)
    cands = run_candidates(
        args.run,
        args.widths,
        args.samples,
        args.batch_size,
        threads,
        repeats=args.repeats,
        latency=args.max_latency_ms is not None or args.latency_mode is not None or args.remeasure,
        latency_mode=args.latency_mode or "sliced",
        temperature=not args.no_temperature,
        loaded=loaded,
        remeasure=args.remeasure,
    )
    sel = select_width(cands, cons)
    if args.json:
        print(json.dumps(selection_dict(sel), indent=2))
    else:
        print(
            f"{'width':>6} {'FLOPs':>10} {'params':>9} {'latency_ms':>10} {'IQR_ms':>8} "
            f"{'val_acc':>8} {'ECE':>7}"
        )
        for c in cands:
            lat = f"{c.latency_ms:10.3f}" if c.latency_ms is not None else f"{'-':>10}"
            iqr = c.latency_iqr_ms
            lat += f" {iqr:8.3f}" if iqr is not None and c.latency_ms is not None else f" {'-':>8}"
            mark = " <-" if sel.chosen == c else ""
            print(
                f"{c.width:6g} {c.flops:10.4g} {c.params:9.4g} {lat} {c.accuracy:8.4f} "
                f"{c.ece:7.4f}{mark}"
            )
        print(sel.explanation)
        if any(c.latency_ms is not None for c in cands):
            print(
                f"latency: median of {args.repeats} passes with {threads} thread(s); widths "
                "whose medians differ by less than the IQR are not ranked by latency"
            )
    return 0 if sel.ok else 1
