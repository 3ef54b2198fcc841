"""``bnn-nested train --config FILE --out RUN``: train and write a run directory."""

from __future__ import annotations


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("--config", required=True, help="YAML config file")
    t.add_argument("--out", required=True, help="run directory to create")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    t.add_argument("--quiet", action="store_true", help="no progress output")

    t.set_defaults(handler=run)


def run(args) -> int:
    from bnn_nested.config import load_config
    from bnn_nested.training.run import train_run

    cfg = load_config(args.config, args.overrides)
    out = train_run(cfg, args.out, quiet=args.quiet, overwrite=args.overwrite)
    print(f"trained: {out}")
    return 0


