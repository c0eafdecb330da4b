"""The ``videotome visualize`` command; its flags are made from
:class:`~videotome.analysis.visualize.VisualizeConfig` and :class:`~videotome.plan.MergeSettings`."""

from __future__ import annotations

import argparse

from ..options import add_options, from_args
from .visualize import VisualizeConfig, visualize


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register visualize."""
    parser = subparsers.add_parser(
        "visualize", help="which patches each merged token holds, as a picture, a video and JSON",
        description=cmd_visualize.__doc__,
    )
    add_options(parser, VisualizeConfig)
    parser.set_defaults(func=cmd_visualize)


def cmd_visualize(args: argparse.Namespace) -> int:
    """Paint each token of a merged model over the patches it holds after chosen layers (merges.png, merges.mp4),
    with its patches (tokens.json) and per-layer merge statistics (layers.json, layers.png)."""
    result = visualize(from_args(VisualizeConfig, args))
    print(f"wrote {result['merges'].parent}: merges.png, merges.mp4, tokens.json, layers.json, layers.png "
          f"(r={result['settings'].r})")
    return 0
