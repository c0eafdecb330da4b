"""Command line: ``videotome vtm train|eval|bench`` and ``videotome features extract``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from videotome.vtm.model import ATTENTION_KERNELS, AUX_WEIGHTS, VTMConfig
from videotome.vtm.partition import PARTITIONS


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``vtm`` and ``features`` command groups."""
    vtm = subparsers.add_parser("vtm", help="learnable video token merging for long videos (VTM)")
    vtm_commands = vtm.add_subparsers(dest="vtm_command", required=True, metavar="COMMAND")
    add_train(vtm_commands)
    add_eval(vtm_commands)
    add_bench(vtm_commands)
    features = subparsers.add_parser("features", help="frozen per-frame token features of videos")
    feature_commands = features.add_subparsers(dest="features_command", required=True, metavar="COMMAND")
    add_extract(feature_commands)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Architecture and merging options shared by train."""
    group = parser.add_argument_group("model")
    group.add_argument("--partition", choices=PARTITIONS, default="learnable", help="how merge targets are chosen")
    group.add_argument("--no-merge", action="store_true", help="the unmerged baseline (same blocks)")
    group.add_argument("--gamma", type=float, default=6.0, help="targets are a 1/gamma share of a window's tokens")
    group.add_argument("--merge-ratio", type=float, default=0.8, help="share of the sources merged (R / |S|)")
    group.add_argument("--weighted-merge", action="store_true", help="size-weighted instead of plain averages")
    group.add_argument("--windows", type=int, nargs="+", help="frames per window of each block (dataset default)")
    group.add_argument("--channels", type=int, nargs="+", help="output channels of each block (default: halve)")
    group.add_argument("--heads", type=int, help="attention heads (8; 4 for the synthetic task)")
    group.add_argument("--dropout", type=float, default=0.1)
    group.add_argument("--aux-weights", choices=AUX_WEIGHTS, default="shared",
                       help="whether the auxiliary path reuses the main path's weights")
    group.add_argument("--saliency-bias-scale", type=float, default=1.0,
                       help="multiplies the saliency added to the auxiliary attention logits (1 = paper)")
    group.add_argument("--sample-with-replacement", action="store_true",
                       help="draw sampled targets with replacement (default without)")
    group.add_argument("--motion-temperature", type=float, default=1.0)
    group.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa")


def add_train(commands: argparse._SubParsersAction) -> None:
    """``vtm train``."""
    parser = commands.add_parser("train", help="train on LVU, Breakfast, COIN features or the synthetic task")
    parser.add_argument("--dataset", choices=("synthetic", "lvu", "breakfast", "coin"), default="synthetic")
    parser.add_argument("--root", help="split CSVs (LVU: the lvu_1.0 directory)")
    parser.add_argument("--features", help="directory of {video_id}.safetensors feature files")
    parser.add_argument("--task", help="LVU task, e.g. scene, director, like_ratio")
    parser.add_argument("--frames", type=int, help="frames per sample (60 LVU, 64 Breakfast/COIN, 12 synthetic)")
    parser.add_argument("--out", default="runs/vtm", help="checkpoint and log directory")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh over a run in OUT (an unfinished one is otherwise continued)")
    parser.add_argument("--epochs", type=int, default=70)
    parser.add_argument("--warmup-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--aux-loss-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--eval-stride", type=int, default=1, help="LVU sliding-window stride in evaluation")
    parser.add_argument("--eval-split", choices=("val", "test"), default="val")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke tests)")
    parser.add_argument("--synthetic-videos", type=int, default=1024, help="synthetic training videos")
    parser.add_argument("--synthetic-eval-videos", type=int, default=512, help="synthetic val / test videos")
    add_model_options(parser)
    parser.set_defaults(func=run_train)


def add_eval(commands: argparse._SubParsersAction) -> None:
    """``vtm eval``."""
    parser = commands.add_parser("eval", help="evaluate a checkpoint")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--root", help="override the checkpoint's CSV directory")
    parser.add_argument("--features", help="override the checkpoint's feature directory")
    parser.add_argument("--eval-stride", type=int, help="override the LVU sliding-window stride")
    parser.set_defaults(func=run_eval)


def add_bench(commands: argparse._SubParsersAction) -> None:
    """``vtm bench``."""
    parser = commands.add_parser("bench", help="samples/s and peak memory of VTM against the unmerged baseline")
    parser.add_argument("--partition", choices=PARTITIONS, default="learnable")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--gamma", type=float, nargs="+", default=[6.0], help="one or more partition factors")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=3, default=[60, 197, 1024], metavar=("FRAMES", "TOKENS", "CH"))
    parser.add_argument("--windows", type=int, nargs="+", default=[6, 30, 60])
    parser.add_argument("--attention", choices=ATTENTION_KERNELS, default="sdpa",
                        help="fused kernels, or the explicit attention matrix (math)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per gamma, instead of lines")
    parser.set_defaults(func=run_bench)


def add_extract(commands: argparse._SubParsersAction) -> None:
    """``features extract``."""
    parser = commands.add_parser("extract", help="per-frame backbone tokens and motion magnitudes of videos")
    parser.add_argument("--backbone", required=True,
                        help="local model directory, or a Hugging Face id already in the local cache (ViT, DINOv2); "
                             "nothing is downloaded")
    parser.add_argument("--videos", required=True, type=Path, help="directory of video files")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=224, help="frames are resized to this square")
    parser.add_argument("--batch-size", type=int, default=16, help="frames per backbone call")
    parser.add_argument("--max-frames", type=int, help="stop after this many frames per video")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="stored token type")
    parser.set_defaults(func=run_extract)


def model_config(args: argparse.Namespace) -> VTMConfig:
    """The architecture from the command line; channels and outputs are completed from the data."""
    from videotome.vtm.train import DATASET_WINDOWS

    synthetic = args.dataset == "synthetic"
    return VTMConfig(
        channels=tuple(args.channels) if args.channels else ((32, 32, 32) if synthetic else None),
        windows=tuple(args.windows or DATASET_WINDOWS[args.dataset]),
        num_heads=args.heads or (4 if synthetic else 8),
        dropout=args.dropout,
        merge=not args.no_merge,
        partition=args.partition,
        gamma=args.gamma,
        merge_ratio=args.merge_ratio,
        weighted_merge=args.weighted_merge,
        sample_with_replacement=args.sample_with_replacement,
        motion_temperature=args.motion_temperature,
        aux_weights=args.aux_weights,
        saliency_bias_scale=args.saliency_bias_scale,
        attention=args.attention,
    )


def run_train(args: argparse.Namespace) -> int:
    """Train (continuing an unfinished run in ``--out``) and print the last evaluation as JSON."""
    from videotome.vtm.train import TrainConfig, train

    config = TrainConfig(
        dataset=args.dataset, out=args.out, root=args.root, features=args.features, task=args.task,
        frames=args.frames, epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, aux_loss_weight=args.aux_loss_weight, seed=args.seed,
        workers=args.workers, eval_stride=args.eval_stride, eval_split=args.eval_split,
        max_steps_per_epoch=args.max_steps_per_epoch, synthetic_videos=args.synthetic_videos,
        synthetic_eval_videos=args.synthetic_eval_videos,
        model=model_config(args),
    )
    metrics = train(config, overwrite=args.overwrite)
    if metrics:
        print(json.dumps(metrics))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint and print the metric as JSON."""
    from videotome.vtm.train import evaluate, load_model

    model, config = load_model(args.checkpoint)
    config.root = args.root or config.root
    config.features = args.features or config.features
    config.eval_stride = args.eval_stride or config.eval_stride
    print(json.dumps(evaluate(model, config, args.split)))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Benchmark and print one line per gamma, or with ``--json`` a list of one object per gamma."""
    from videotome.vtm.bench import benchmark

    results = benchmark(
        args.partition, tuple(args.gamma), batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        shape=tuple(args.shape), windows=tuple(args.windows), attention=args.attention, device=args.device,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results:
        print(
            f"{row['partition']} gamma={row['gamma']:g} batch={row['batch_size']} {row['attention']}: "
            f"baseline {row['baseline_samples_per_s']:.3f} samples/s, {row['baseline_peak_mb']:.0f} MiB; "
            f"VTM {row['vtm_samples_per_s']:.3f} samples/s, {row['vtm_peak_mb']:.0f} MiB; "
            f"speedup {row['speedup']:.2f}x, memory -{100 * row['memory_reduction']:.0f}%"
        )
    return 0


def run_extract(args: argparse.Namespace) -> int:
    """Extract features; exit code 1 when some video failed in this run (OUT/failed.tsv lists every video that
    failed and is not done yet, one line each)."""
    from videotome.vtm.features import FAILED_LIST, extract_directory

    written, skipped, failed = extract_directory(
        args.backbone, args.videos, args.out, fps=args.fps, image_size=args.image_size,
        batch_size=args.batch_size, max_frames=args.max_frames, dtype=getattr(torch, args.dtype),
    )
    where = f" (see {args.out / FAILED_LIST})" if failed else ""
    print(f"{written} written, {skipped} already done, {failed} failed{where}")
    return 1 if failed else 0
