"""Command line: ``videotome finetune`` (flags from :class:`~videotome.finetune.train.FinetuneConfig`)."""

from __future__ import annotations

import argparse

from ..distributed import in_process_group, is_main_process
from ..options import add_options, from_args
from .train import FinetuneConfig, finetune


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``finetune``."""
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a video classifier on a dataset (the paper's recipes; torchrun for many GPUs)",
        description=_finetune.__doc__,
    )
    add_options(parser, FinetuneConfig)
    parser.set_defaults(func=_finetune)


@in_process_group
def _finetune(args: argparse.Namespace) -> int:
    """Fine-tune a checkpoint with a recipe of the paper's Table 5, validating after every epoch; OUT/final and
    OUT/best are checkpoints `videotome eval` reads with no further flag."""
    result = finetune(from_args(FinetuneConfig, args))
    if is_main_process():
        for epoch in result["epochs"]:
            accuracy = "  ".join(f"{name.replace('_top1', '')} {100 * value:.1f}"
                                 for name, value in epoch["val"].items() if name.endswith("_top1"))
            print(f"epoch {epoch['epoch']}: loss {epoch['train_loss']:.4f}  top-1 {accuracy}  "
                  f"({epoch['seconds']:.1f} s, {epoch['skipped_videos']} videos skipped)")
        print(f"wrote {result['final']} and {result['best']} (heads {result['heads'] or 'class'}, recipe "
              f"{result['recipe']})")
    return 0
