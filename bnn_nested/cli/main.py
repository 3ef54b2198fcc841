"""Command line: ``bnn-nested <command>``; one module per command in this package.

Errors in user input print one line (``bnn-nested: error: ...``, at most :data:`MAX_MESSAGE`
characters) and exit with status 2; ``--debug`` shows the traceback instead. A NaN/Inf loss during training exits with status 1 (one line naming the
step and the last good checkpoint); Ctrl-C (SIGINT) while training saves a checkpoint and exits with
status 130.
"""

from __future__ import annotations

import importlib
import os
import sys

from bnn_nested.cli.common import Parser, UsageError
from bnn_nested.config import ConfigError
from bnn_nested.io import first_line

#: Command modules; each defines ``add_parser(subparsers)`` (setting ``handler``) and ``run(args)``.
COMMAND_MODULES = ("train", "evaluate", "compare", "select", "cascade")
#: Longest error line printed (a value echoed back never floods the terminal).
MAX_MESSAGE = 500


def build_parser() -> Parser:
    p = Parser(prog="bnn-nested", description="Bayesian nested neural networks")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"bnn_nested.cli.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv  # accepted anywhere on the line
    try:
        args = build_parser().parse_args([a for a in argv if a != "--debug"])
    except UsageError as err:  # a parse error is always one line, even with --debug
        print(f"bnn-nested: error: {_one_line(err)}", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except KeyboardInterrupt as err:
        if debug:
            raise
        if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 speaks for all ranks
            return 130
        detail = _one_line(err) if str(err).strip() else "interrupted"
        print(f"bnn-nested: {detail}", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # NonFiniteLossError: not bad input, but one line too
        if debug:
            raise
        print(f"bnn-nested: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except (UsageError, ConfigError, ValueError, OSError, RuntimeError) as err:
        if debug:
            raise
        print(f"bnn-nested: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException) -> str:
    return first_line(err, MAX_MESSAGE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
