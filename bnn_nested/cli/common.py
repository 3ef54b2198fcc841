"""Shared pieces of the command line."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """Bad command-line input (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """``argparse`` parser whose errors are one line (raised as :class:`UsageError`)."""

    def error(self, message: str):
        raise UsageError(message)


def parse_widths(text: str) -> list[float]:
    """``"0.25,0.5 1"`` -> ``[0.25, 0.5, 1.0]``; every width in (0, 1]."""
    try:
        values = [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in (0, 1], got {text!r}") from None
    if not values or any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"every width must be in (0, 1], got {text!r}")
    return values
