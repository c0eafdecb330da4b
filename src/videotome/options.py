"""Command-line options shared by every command, below both ``cli`` and the command modules (no import cycle)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1, refused with the value named."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``: CPU threads for torch; 1 avoids the slowdown of oversubscribing a shared machine."""
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_threads(threads: int | None) -> None:
    """Set torch's CPU thread count when ``--threads`` was given (None leaves torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
