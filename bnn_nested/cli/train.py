"""``bnn-nested train --config FILE --out RUN`` (train) or ``--resume RUN`` (continue a run).

Run on several processes with ``torchrun --nproc_per_node=N -m bnn_nested train ...``
(see docs/multiprocess.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from bnn_nested.cli.common import UsageError, add_allow_import_argument
from bnn_nested.config import load_config
from bnn_nested.io import lock_holder
from bnn_nested.threads import add_threads_argument

#: :data:`bnn_nested.runs.rundir.LOCK` (not imported: that package imports torch, and a locked
#: run is refused before torch is loaded).
RUN_LOCK = ".bnn-nested.lock"


def refuse_if_locked(run_dir: str) -> None:
    """Refuse at once (before torch is imported) a run another process is writing; the lock is
    taken again, for real, by the writer itself."""
    holder = lock_holder(Path(run_dir) / RUN_LOCK)
    if holder is not None:
        who = f" (process {holder})" if holder.isdigit() else ""
        raise UsageError(
            f"{run_dir} is being written by another bnn-nested process{who}; wait for it to "
            "finish or stop it first"
        )


def _report(out) -> None:
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 speaks
        print(f"trained: {out}")


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model from a YAML config, or resume a run")
    t.add_argument("--config", help="YAML config file")
    t.add_argument("--out", help="run directory to create")
    t.add_argument("--resume", metavar="RUN", help="continue RUN from its last checkpoint")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=5 (repeatable)",
    )
    t.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        help="override train.device (auto: CUDA when available)",
    )
    t.add_argument(
        "--init-from",
        metavar="PATH",
        help="start from a trained plain network's state dict (weights-only; sets model.init_from)",
    )
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    add_threads_argument(t)  # sets train.threads; --resume keeps the run's own
    add_allow_import_argument(t)  # --resume of a run whose config imports modules

    t.set_defaults(handler=run)


def run(args) -> int:
    if args.resume is not None:
        given = [
            f
            for f, v in (
                ("--config", args.config),
                ("--out", args.out),
                ("--set", args.overrides),
                ("--overwrite", args.overwrite),
                ("--init-from", args.init_from),
                ("--threads", args.threads),
            )
            if v
        ]
        if given:
            raise UsageError(
                f"--resume continues a run as it was configured; drop {', '.join(given)}"
            )
        refuse_if_locked(args.resume)
        from bnn_nested.runs.run import (
            resume_run,  # deferred: imports torch; --help and usage errors stay fast
        )

        out = resume_run(
            args.resume, quiet=args.quiet, device=args.device, allow_import=args.allow_import
        )
        _report(out)
        return 0
    if args.config is None or args.out is None:
        raise UsageError("train needs --config FILE and --out RUN (or --resume RUN)")
    if not args.out.strip():
        raise UsageError("--out: empty path; name the run directory to create")
    refuse_if_locked(args.out)
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.threads is not None:
        overrides.append(f"train.threads={args.threads}")
    if args.init_from is not None:
        if Path(args.init_from).is_dir():
            raise UsageError(
                f"--init-from: {args.init_from} is a folder; give the state-dict file in it "
                "(torch.save(net.state_dict(), PATH))"
            )
        if not Path(args.init_from).is_file():
            raise UsageError(f"--init-from: no such file {args.init_from}")
        overrides.append(f"model.init_from={Path(args.init_from).resolve()}")
    cfg = load_config(args.config, overrides)
    from bnn_nested.runs.run import (
        train_run,  # deferred: imports torch; --help and usage errors stay fast
    )

    out = train_run(cfg, args.out, quiet=args.quiet, overwrite=args.overwrite)
    _report(out)
    return 0
