"""Shared pieces of the command line."""

from __future__ import annotations

import argparse
import sys

from bnn_nested.config import BUILTIN_SCORES, unknown_scores
from bnn_nested.io import visible


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (raised as :class:`UsageError`)."""

    def error(self, message: str):
        raise UsageError(message)


def bounded_int(name: str, value: int | None, low: int, high: int) -> None:
    """Refuse ``value`` (when given) outside ``[low, high]`` with one line naming ``name``."""
    if value is not None and not low <= value <= high:
        raise UsageError(f"{name} must be in [{low}, {high}], got {str(value)[:40]}")


def add_allow_import_argument(parser) -> None:
    """``--allow-import``: trust a run whose config imports modules (its ``imports`` or
    ``model.name: import``); importing runs their code, so it is refused without the flag."""
    parser.add_argument(
        "--allow-import",
        action="store_true",
        help="trust the run's config to import its modules (imports, model.name: import); "
        "importing runs their code: only for runs you trust",
    )


def note_unfinished(loaded, run_dir) -> None:
    """Say on stderr (one line each) when the run's checkpoint is not the final one, and when the
    run's ``config.yaml`` was edited after training (the checkpoint's config is what is used)."""
    text = loaded.unfinished_note(run_dir)
    if text:
        print(f"bnn-nested: note: {text}", file=sys.stderr)
    edits = loaded.config_edits()
    if edits == ["<unreadable>"]:  # runs.loaded.UNREADABLE (not imported: that imports torch)
        text = (
            f"{run_dir}/config.yaml is not a readable YAML mapping; the config the checkpoint "
            "was trained with is used"
        )
        print(f"bnn-nested: note: {visible(text)}", file=sys.stderr)
    elif edits:
        shown = ", ".join(edits[:6]) + (f" (+{len(edits) - 6} more)" if len(edits) > 6 else "")
        text = (
            f"{run_dir}/config.yaml differs from the config the checkpoint was trained with "
            f"({shown[:300]}); edits there are not applied: the checkpoint's config is used "
            "(--widths / --samples set what to evaluate; retrain to change the rest)"
        )
        print(f"bnn-nested: note: {visible(text)}", file=sys.stderr)


def parse_widths(text: str) -> list[float]:
    """``"0.25,0.5 1"`` -> ``[0.25, 0.5, 1.0]``; every width in (0, 1]."""
    try:
        values = [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers in (0, 1], got {text[:100]!r}"
        ) from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every width must be in (0, 1], got {text[:100]!r}")
    if len(values) > 1000:
        raise argparse.ArgumentTypeError(f"at most 1000 widths, got {len(values)}")
    return values


def precheck_scores(names: list[str], field: str, allow_import: bool, probabilities=False) -> None:
    """Uncertainty score names checked before torch is imported: without ``--allow-import`` no
    user module can register one, so only the built-in names exist (with it, the names are checked
    after the run's imports, :func:`bnn_nested.evaluation.ood.check_scores`)."""
    if allow_import:
        return
    hint = "or one a module in the run's imports registers, with --allow-import"
    message = unknown_scores(names, BUILTIN_SCORES, field, probabilities, hint)
    if message:
        raise UsageError(message)
