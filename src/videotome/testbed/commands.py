"""Command line: ``videotome testbed train``, ``videotome testbed generate`` and ``videotome demo``.

Each command's flags are made from the dataclass it runs on (:mod:`videotome.options`): ``testbed train`` from
:class:`~videotome.testbed.train.TrainConfig`, ``testbed generate`` from
:class:`~videotome.testbed.export.GenerateConfig`, ``demo`` from :class:`~videotome.testbed.demo.DemoConfig`.
"""

from __future__ import annotations

import argparse
import json

from ..options import add_options, build, from_args, given
from .demo import DemoConfig, run_demo
from .export import LABELS, GenerateConfig, write_videos
from .train import TrainConfig, train


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``testbed`` (with ``train`` and ``generate``) and ``demo``."""
    testbed = subparsers.add_parser("testbed", help="the built-in testbed: generate clips, train its models")
    actions = testbed.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")
    commands = (
        (actions, "train", "train a small testbed model (resumes from OUT if interrupted)", TrainConfig, _train),
        (actions, "generate", "write testbed clips as mp4 files and a `path verb noun` list", GenerateConfig,
         _generate),
        (subparsers, "demo", "accuracy and speed of token merging on the built-in testbed models (minutes on a CPU)",
         DemoConfig, _demo),
    )
    parsers = {}
    for group, name, summary, config, run in commands:
        parsers[name] = group.add_parser(name, help=summary)
        add_options(parsers[name], config)
        parsers[name].set_defaults(func=run)
    parsers["train"].add_argument("--overwrite", action="store_true",
                                  help="replace a finished run in OUT (refused without)")
    parsers["demo"].add_argument("--json", action="store_true", help="print the table's rows as one JSON object")


def _train(args: argparse.Namespace) -> int:
    # --threads is every command's flag (videotome.cli); the run records it, to be reproducible
    config = build(TrainConfig, {**given(args, TrainConfig), "threads": args.threads})
    record = train(config, overwrite=args.overwrite)
    print(json.dumps({"arch": record["arch"], "train_seconds": record["train_seconds"],
                      **record["validation_accuracy"]}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    config = from_args(GenerateConfig, args)
    out = write_videos(config)
    print(f"wrote {config.count} clips, {out / LABELS} and {out / 'clips.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    report = run_demo(from_args(DemoConfig, args))
    if args.json:
        print(json.dumps({"rows": [row.to_dict() for row in report["rows"]]}))
    else:
        print(report["markdown"], end="")
    return 0
