"""Command line: ``bnn-nested <command>``; one module per command in this package.

Errors in user input print one line (``bnn-nested: error: ...``, at most :data:`MAX_MESSAGE`
characters) and exit with status 2; ``--debug`` shows the traceback instead. A NaN/Inf loss during training exits with status 1 (one line naming the
step and the last good checkpoint); Ctrl-C (SIGINT) while training saves a checkpoint and exits with
status 130 (under torchrun every rank exits 130 and rank 0 alone prints; torchrun itself exits 1).
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings

from bnn_nested.cli.common import Parser, UsageError
from bnn_nested.config import ConfigError
from bnn_nested.io import first_line, visible

#: Command modules; each defines ``add_parser(subparsers)`` (setting ``handler``) and ``run(args)``.
COMMAND_MODULES = ("train", "evaluate", "compare", "select", "cascade", "export_weights")
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
    _escape_unprintable_output()
    debug = "--debug" in argv  # accepted anywhere on the line
    try:
        args = build_parser().parse_args([a for a in argv if a != "--debug"])
    except UsageError as err:  # a parse error is always one line, even with --debug
        print(f"bnn-nested: error: {_one_line(err)}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings():  # restores the caller's warning display on return
            warnings.showwarning = _show_warning
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
    except SyntaxError as err:  # in a module of the user's that a config imports
        if debug:
            raise
        where = f"{err.filename}, line {err.lineno}" if err.filename else "a module"
        detail = f"syntax error in {where}: {err.msg} (a module the config imports?)"
        print(f"bnn-nested: error: {_one_line(detail)}", file=sys.stderr)
        return 2


def _one_line(err: BaseException | str) -> str:
    """The first line of ``err``, control characters escaped (a config key's escape bytes must not
    reach the terminal), with a hint where the cause is a module not on the import path."""
    text = visible(first_line(err, MAX_MESSAGE))
    m = re.search(r"No module named '([\w.]+)'", text)
    if m:
        top = m.group(1).split(".")[0]
        text += (
            f"; if {top!r} is your own module, put the folder holding it on PYTHONPATH "
            "(e.g. PYTHONPATH=. bnn-nested ...)"
        )
    return text


def _escape_unprintable_output() -> None:
    """Print what the streams' encoding cannot hold as escapes instead of failing: a run folder
    whose name is not UTF-8 (its bytes arrive as lone surrogates) is then shown, not an error."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # not a text stream of io: leave it
            pass


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, without the source path and line of the code that raised it."""
    print(f"bnn-nested: warning: {_one_line(str(message))}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
