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
import signal
import sys
import time
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
        if _other_rank(err):  # under torchrun rank 0 speaks for all ranks
            return 130
        detail = _one_line(err) if str(err).strip() else "interrupted"
        print(f"bnn-nested: {detail}", file=sys.stderr)
        return 130
    except FloatingPointError as err:  # NonFiniteLossError: not bad input, but one line too
        if debug:
            raise
        return _error(err, _one_line(err), 1)
    except (UsageError, ConfigError, ValueError, OSError, RuntimeError) as err:
        if debug:
            raise
        return _error(err, _one_line(err), 2)
    except SyntaxError as err:  # in a module of the user's that a config imports
        if debug:
            raise
        where = f"{err.filename}, line {err.lineno}" if err.filename else "a module"
        detail = f"syntax error in {where}: {err.msg} (a module the config imports?)"
        return _error(err, _one_line(detail), 2)


#: Seconds a rank other than 0 waits, on an error every rank meets alike, for torchrun to end it
#: (torchrun terminates the other ranks once one has failed: here, rank 0 after printing).
RANK_WAIT_S = 10.0


def _error(err: BaseException, detail: str, code: int) -> int:
    """Print ``bnn-nested: error: detail`` (once per job under torchrun) and return ``code``.

    Under torchrun rank 0 speaks for all ranks about errors they meet alike (:func:`_other_rank`).
    Another rank must not simply exit first: torchrun answers a failed rank by terminating the
    others (SIGTERM), which could end rank 0 before it has printed. So such a rank waits up to
    :data:`RANK_WAIT_S` for that SIGTERM and then exits with ``code``, silently; if none comes,
    rank 0 did not fail, and this rank prints its error, naming its rank."""
    if _other_rank(err) and _wait_for_termination(code):
        return code
    print(f"bnn-nested: error: {_rank_prefix()}{detail}", file=sys.stderr)
    return code


def _wait_for_termination(code: int) -> bool:
    """Wait :data:`RANK_WAIT_S` for SIGTERM (then leave at once with status ``code``); False when
    none came (or signals cannot be received here)."""

    def leave(signum, frame):  # pragma: no cover - the process ends here
        sys.stderr.flush()
        os._exit(code)

    try:
        previous = signal.signal(signal.SIGTERM, leave)
    except ValueError:  # not the main thread
        return False
    try:
        time.sleep(RANK_WAIT_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return False


def _rank() -> int:
    """This process's rank under torchrun (``RANK``), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _other_rank(err: BaseException) -> bool:
    """Is this a rank other than 0 of a torchrun job, failing the way every rank fails alike?

    Rank 0 speaks for all ranks about what they meet alike: Ctrl-C (every rank gets the signal and
    the ranks stop at the same step), a non-finite loss (agreed by all-reduce), input errors
    (every rank reads the same config, run directory and files) and a peer that left the process
    group (that peer says why). Any other error (a rank's own runtime failure) is printed by the
    rank that met it, with its rank."""
    if _rank() == 0:
        return False
    if isinstance(err, (KeyboardInterrupt, FloatingPointError, SyntaxError)):
        return True
    if isinstance(err, (UsageError, ConfigError, ValueError, OSError)):
        return True
    # the classes of modules already loaded (a runtime error under torchrun comes from training):
    # an unusable checkpoint (input), a peer gone from the process group
    checkpoint = sys.modules.get("bnn_nested.training.checkpoint")
    dist = sys.modules.get("torch.distributed")
    alike = (getattr(checkpoint, "CheckpointError", ()), getattr(dist, "DistError", ()))
    return any(isinstance(err, c) for c in alike if isinstance(c, type))


def _rank_prefix() -> str:
    return f"rank {_rank()}: " if _rank() != 0 else ""


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
