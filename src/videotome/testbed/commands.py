"""Command line: ``videotome testbed train``, ``videotome testbed generate`` and ``videotome demo``."""

from __future__ import annotations

import argparse
import json

from .data import VALIDATION_SIZE
from .models import ARCHITECTURES, CHECKPOINTS


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``testbed`` (with ``train`` and ``generate``) and ``demo``."""
    testbed = subparsers.add_parser("testbed", help="the built-in testbed: generate clips, train its models")
    actions = testbed.add_subparsers(dest="testbed_command", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train a small testbed model (resumes from OUT if interrupted)")
    train.add_argument("--arch", required=True, choices=ARCHITECTURES)
    train.add_argument("--out", required=True, help="checkpoint directory (resumes from its training_state.pt)")
    train.add_argument("--steps", type=int, default=800)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1.5e-3)
    train.add_argument("--weight-decay", type=float, default=0.05)
    train.add_argument("--warmup", type=int, default=50)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-clips", type=int, default=512, help="validation clips scored at the end")
    train.add_argument("--save-every", type=int, default=50, help="steps between resumable states")
    train.add_argument("--pool", type=int, default=0, help="clips generated once and reused (0: fresh every step)")
    train.add_argument("--init", default=None, help="start from this checkpoint's weights (fine-tuning)")
    train.add_argument("--overwrite", action="store_true", help="replace a finished run in OUT (refused without)")
    train.set_defaults(func=_train)

    generate = actions.add_parser("generate", help="write testbed clips as mp4 files and a `path verb noun` list")
    generate.add_argument("--split", choices=("train", "val"), default="val")
    generate.add_argument("--count", type=int, default=64)
    generate.add_argument("--seed", type=int, default=None, help="default (val only): the fixed validation set")
    generate.add_argument("--out", required=True, help="directory for the videos and the lists")
    generate.set_defaults(func=_generate)

    demo = subparsers.add_parser(
        "demo", help="accuracy and speed of token merging on the built-in testbed models (minutes on a CPU)"
    )
    demo.add_argument("--models", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    demo.add_argument("--limit", type=int, default=None, help="validation clips, at least 1 (default 512, --full 1024)")
    demo.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    demo.add_argument("--full", action="store_true", help="the paper's analyses: schedules, thresholds, aligned")
    demo.add_argument("--batch-size", type=int, default=128, help="clips per forward pass when scoring")
    demo.add_argument("--timing-clips", type=int, default=128, help="batch size of the interleaved timing")
    demo.add_argument("--repeats", type=int, default=3, help="timed rounds per setting (median)")
    demo.add_argument("--checkpoints", default=str(CHECKPOINTS), help="directory with one checkpoint per model")
    demo.add_argument("--json", action="store_true", help="print the table as one JSON object")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    demo.set_defaults(func=_demo)


def _train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    fields = ("arch", "out", "steps", "batch_size", "lr", "weight_decay", "warmup", "seed", "eval_clips",
              "save_every", "pool", "threads", "init")
    record = train(TrainConfig(**{name: getattr(args, name) for name in fields}), overwrite=args.overwrite)
    print(json.dumps({"arch": record["arch"], "train_seconds": record["train_seconds"],
                      **record["validation_accuracy"]}))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from .export import LABELS, write_videos

    out = write_videos(args.split, args.count, args.seed, args.out)
    print(f"wrote {args.count} clips, {out / LABELS} and {out / 'clips.json'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import markdown_table, run_demo, table_json

    limit = args.limit if args.limit is not None else (VALIDATION_SIZE if args.full else 512)
    rows = run_demo(
        args.models,
        limit=limit,
        out=args.out,
        full=args.full,
        batch_size=args.batch_size,
        timing_clips=args.timing_clips,
        repeats=args.repeats,
        progress=args.progress,
        checkpoints=args.checkpoints,
    )
    print(json.dumps(table_json(rows)) if args.json else markdown_table(rows), end="" if not args.json else "\n")
    return 0
