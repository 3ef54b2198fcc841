"""Command line: ``bnn-nested <command>``; one module per command in this package.

Errors in user input print one line (``bnn-nested: error: ...``) and exit with status 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from bnn_nested.cli.common import Parser, UsageError
from bnn_nested.config import ConfigError

#: Command modules; each defines ``add_parser(subparsers)`` (setting ``handler``) and ``run(args)``.
COMMAND_MODULES = ("train", "evaluate", "compare")


def build_parser() -> Parser:
    p = Parser(prog="bnn-nested", description="Bayesian nested neural networks")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"bnn_nested.cli.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except KeyboardInterrupt:
        print("bnn-nested: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ConfigError, ValueError, OSError, RuntimeError) as err:
        if debug:
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"bnn-nested: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
