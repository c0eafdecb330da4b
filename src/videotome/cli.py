"""The ``videotome`` command line: one sub-command group per feature module.

Each feature module exposes ``add_commands(subparsers)``, which adds its sub-commands and sets a ``func``
default that receives the parsed arguments and returns an exit code. The project's expected errors
(:data:`videotome.errors.EXPECTED_ERRORS`) are caught here, and ``--threads`` is added to, once for every
command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import EXPECTED_ERRORS
from .options import add_threads_option, apply_threads

COMMAND_MODULES = (
    "videotome.bench",
    "videotome.tune",
    "videotome.evaluation.commands",
    "videotome.vtm.commands",
    "videotome.testbed.commands",
    "videotome.analysis.commands",
    "videotome.finetune.commands",
    "videotome.vlm.commands",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every feature module's sub-commands."""
    parser = argparse.ArgumentParser(prog="videotome", description="Token merging for video transformers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    for command in _commands(parser):
        add_threads_option(command)
        command.set_defaults(command_name=command.prog.removeprefix(f"{parser.prog} "))
    return parser


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of every runnable command (the leaves of the sub-command tree)."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        return [parser]
    return [leaf for group in groups for child in group.choices.values() for leaf in _commands(child)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script: run one command; an expected error becomes one line and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        apply_threads(args.threads)
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as error:
        print(f"videotome {args.command_name}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
