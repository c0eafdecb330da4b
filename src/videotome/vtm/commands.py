"""Command line: ``videotome vtm train|eval|bench`` and ``videotome features extract``.

Each command's flags are made from the dataclass it runs on (:mod:`videotome.options`): ``vtm train`` from
:class:`~videotome.vtm.train.TrainConfig` and its :class:`~videotome.vtm.model.VTMConfig`, ``vtm bench`` from
:class:`~videotome.vtm.bench.VTMBenchConfig`, the others from the small dataclasses below.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field

from videotome.distributed import in_process_group
from videotome.options import add_options, build, from_args, given
from videotome.vtm.bench import VTMBenchConfig
from videotome.vtm.train import DATASET_MODEL_DEFAULTS, TrainConfig


@dataclass
class VTMEvalConfig:
    """``vtm eval``: a checkpoint, the split, and what may differ from the checkpoint's own training settings."""

    checkpoint: str = field(metadata={"help": "a last.pt written by vtm train"})
    split: str = field(default="test", metadata={"help": "split to score", "choices": ("val", "test")})
    root: str | None = field(default=None, metadata={"help": "override the checkpoint's CSV directory"})
    features: str | None = field(default=None, metadata={"help": "override the checkpoint's feature directory"})
    eval_stride: int | None = field(default=None, metadata={"help": "override the LVU sliding-window stride"})


@dataclass
class ExtractConfig:
    """``features extract``: the arguments of :func:`videotome.vtm.features.extract_directory`."""

    backbone: str = field(metadata={"help": "local model directory, or a Hugging Face id already in the local cache "
                                            "(ViT, DINOv2); nothing is downloaded"})
    videos: str = field(metadata={"help": "directory of video files"})
    out: str = field(metadata={"help": "directory of the feature files"})
    fps: float = field(default=1.0, metadata={"help": "frames sampled per second"})
    image_size: int = field(default=224, metadata={"help": "frames are resized to this square"})
    batch_size: int = field(default=16, metadata={"help": "frames per backbone call"})
    max_frames: int | None = field(default=None, metadata={"help": "stop after this many frames per video"})
    dtype: str = field(default="float16", metadata={"help": "stored token type", "choices": ("float16", "float32")})


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``vtm`` and ``features`` command groups."""
    vtm = subparsers.add_parser("vtm", help="learnable video token merging for long videos (VTM)")
    vtm_commands = vtm.add_subparsers(dest="vtm_command", required=True, metavar="COMMAND")
    train = vtm_commands.add_parser("train", help="train on LVU, Breakfast, COIN features or the synthetic task")
    add_options(train, TrainConfig)
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh over a run in OUT (an unfinished one is otherwise continued)")
    train.set_defaults(func=cmd_vtm_train)
    evaluate = vtm_commands.add_parser("eval", help="evaluate a checkpoint")
    add_options(evaluate, VTMEvalConfig)
    evaluate.set_defaults(func=cmd_vtm_eval)
    bench = vtm_commands.add_parser("bench", help="samples/s and peak memory of VTM against the unmerged baseline")
    add_options(bench, VTMBenchConfig)
    bench.add_argument("--json", action="store_true", help="print a JSON list, one object per gamma, instead of lines")
    bench.set_defaults(func=cmd_vtm_bench)
    features = subparsers.add_parser("features", help="frozen per-frame token features of videos")
    feature_commands = features.add_subparsers(dest="features_command", required=True, metavar="COMMAND")
    extract = feature_commands.add_parser("extract", help="per-frame backbone tokens and motion magnitudes of videos")
    add_options(extract, ExtractConfig)
    extract.set_defaults(func=cmd_features_extract)


@in_process_group
def cmd_vtm_train(args: argparse.Namespace) -> int:
    """Train (continuing an unfinished run in ``--out``) and print the last evaluation as JSON."""
    from videotome.vtm.train import train

    values = given(args, TrainConfig)
    dataset_defaults = DATASET_MODEL_DEFAULTS[values.get("dataset", TrainConfig.dataset)]
    values["model"] = {**dataset_defaults, **values.get("model", {})}
    metrics = train(build(TrainConfig, values), overwrite=args.overwrite)
    if metrics:
        print(json.dumps(metrics))
    return 0


def cmd_vtm_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint and print the metric as JSON."""
    from videotome.vtm.train import evaluate, load_model

    request = from_args(VTMEvalConfig, args)
    model, config = load_model(request.checkpoint)
    config.root = request.root or config.root
    config.features = request.features or config.features
    config.eval_stride = request.eval_stride or config.eval_stride
    print(json.dumps(evaluate(model, config, request.split)))
    return 0


def cmd_vtm_bench(args: argparse.Namespace) -> int:
    """Benchmark and print one line per gamma, or with ``--json`` a list of one object per gamma."""
    from videotome.vtm.bench import benchmark

    results = benchmark(from_args(VTMBenchConfig, args))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results:
        print(
            f"{row['partition']} gamma={row['gamma']:g} batch={row['batch_size']} {row['attention']} {row['mode']}: "
            f"baseline {row['baseline_samples_per_s']:.3f} samples/s, {row['baseline_peak_mb']:.0f} MiB; "
            f"VTM {row['vtm_samples_per_s']:.3f} samples/s, {row['vtm_peak_mb']:.0f} MiB; "
            f"speedup {row['speedup']:.2f}x, peak memory {-100 * row['memory_reduction']:+.0f}%"
        )
    return 0


def cmd_features_extract(args: argparse.Namespace) -> int:
    """Extract features; exit code 1 when some video failed in this run (OUT/failed.tsv lists every video that
    failed and is not done yet, one line each)."""
    import torch

    from videotome.vtm.features import FAILED_LIST, extract_directory

    config = from_args(ExtractConfig, args)
    written, skipped, failed = extract_directory(**{**asdict(config), "dtype": getattr(torch, config.dtype)})
    where = f" (see {config.out}/{FAILED_LIST})" if failed else ""
    print(f"{written} written, {skipped} already done, {failed} failed{where}")
    return 1 if failed else 0
