"""``bnn-nested export-weights RUN --out DIR``: the trained model of a run as a shareable directory,
``DIR/model.safetensors`` + ``DIR/config.json`` (config, input shape, temperatures per width; the
batch-norm statistics of every calibrated width are among the tensors). Load it anywhere with
``bnn_nested.runs.from_pretrained(DIR)``: no pickle, no training run, no data set
(:mod:`bnn_nested.runs.pretrained`).

Exit status 0 when written; 2 on bad input (nothing written).
"""

from __future__ import annotations

import sys

from bnn_nested.cli.common import UsageError, add_allow_import_argument


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export-weights",
        help="a run's weights as safetensors + config.json, loadable without the run",
        description="Write DIR/model.safetensors and DIR/config.json from RUN's checkpoint "
        "(weights, per-width batch-norm statistics, temperatures). Load with "
        "bnn_nested.runs.from_pretrained(DIR); loading runs no code from the files.",
    )
    p.add_argument("run", help="run directory written by `bnn-nested train`")
    p.add_argument("--out", required=True, help="directory to create (must not hold other files)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a directory that export-weights wrote before",
    )
    add_allow_import_argument(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    if not args.out.strip():
        raise UsageError("--out: empty path; name the directory to create")
    from bnn_nested.runs.pretrained import (  # deferred: imports torch; --help and usage errors stay fast
        CONFIG_FILE,
        WEIGHTS_FILE,
        check_pretrained_out,
        from_run,
    )

    check_pretrained_out(args.out, args.overwrite)  # before the checkpoint is read
    pre = from_run(args.run, allow_import=args.allow_import)
    if not pre.source.get("complete", False):
        print(
            f"bnn-nested: note: {args.run} is unfinished (checkpoint at step "
            f"{pre.source.get('step')}); exporting that checkpoint",
            file=sys.stderr,
        )
    out = pre.save_pretrained(args.out, overwrite=args.overwrite)
    widths = ", ".join(f"{w:g}" for w in pre.bn_calibrated_widths()) or "none"
    temps = ", ".join(f"{w:g}" for w in sorted(pre.temperatures)) or "none"
    print(f"written: {out / WEIGHTS_FILE}, {out / CONFIG_FILE}")
    print(f"batch-norm statistics for widths: {widths}; temperatures for widths: {temps}")
    print(f"load with: bnn_nested.runs.from_pretrained({str(out)!r})")
    return 0
