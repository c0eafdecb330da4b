"""The ``videotome`` command line: one sub-command group per feature module.

Each feature module exposes ``add_commands(subparsers)``, which adds its sub-commands and sets a ``func``
default that receives the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMAND_MODULES = (
    "videotome.bench",
    "videotome.evaluation.commands",
    "videotome.vtm.commands",
    "videotome.testbed.commands",
)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """``--threads``: CPU threads for torch; 1 avoids the slowdown of oversubscribing a shared machine."""
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU thread count when ``--threads`` was given."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads} must be at least 1")
        import torch

        torch.set_num_threads(args.threads)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every feature module's sub-commands."""
    parser = argparse.ArgumentParser(prog="videotome", description="Token merging for video transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
