"""``videotome bench``: the unmerged and the merged model timed in one process, with FLOPs and peak memory.

Built-in names build the paper's base models from their configurations with random weights (timing does not
depend on the weights, and nothing is downloaded); a local directory loads a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from . import patch, plan
from .adapters.base import MERGE_REGION
from .loading import load_local_model
from .measure import peak_memory_mb, seconds_in_region, time_interleaved
from .plan import parse_r

#: frames of a clip for an image model, which sees them as a batch
IMAGE_FRAMES_PER_CLIP = 8


def _builtin_models() -> dict[str, Callable[[], nn.Module]]:
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        TimesformerConfig,
        TimesformerForVideoClassification,
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        VivitConfig,
        VivitForVideoClassification,
    )

    from .models import MotionformerConfig, MotionformerForVideoClassification

    return {
        "videomae-base": lambda: VideoMAEForVideoClassification(VideoMAEConfig(num_labels=400)),
        "vivit-base": lambda: VivitForVideoClassification(VivitConfig(num_labels=400)),
        "timesformer-base": lambda: TimesformerForVideoClassification(TimesformerConfig(num_labels=400)),
        "motionformer-base": lambda: MotionformerForVideoClassification(MotionformerConfig(num_labels=400)),
        "dinov2-small": lambda: Dinov2Model(
            Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=224)
        ),
    }


BUILTIN_MODELS = ("videomae-base", "vivit-base", "timesformer-base", "motionformer-base", "dinov2-small")


def load_model(name_or_path: str) -> nn.Module:
    """A built-in base model with random weights, or a model from a local Hugging Face directory."""
    builders = _builtin_models()
    if name_or_path in builders:
        torch.manual_seed(0)
        return builders[name_or_path]().eval()
    if not Path(name_or_path).is_dir():
        raise ValueError(f"--model {name_or_path!r} is neither a built-in name {BUILTIN_MODELS} nor a local directory")
    return load_local_model(name_or_path)


def example_input(model: nn.Module, batch_size: int) -> tuple[torch.Tensor, int]:
    """Random pixel values of the model's configured clip shape (its config's image size, which also sets the token
    layout that fractional r and ``tokens_per_layer`` come from), and how many clips they hold."""
    config = model.config
    size = config.image_size
    if config.model_type in ("vit", "dinov2"):
        return torch.randn(batch_size * IMAGE_FRAMES_PER_CLIP, config.num_channels, size, size), batch_size
    return torch.randn(batch_size, config.num_frames, config.num_channels, size, size), batch_size


def count_flops(model: nn.Module, pixel_values: torch.Tensor) -> float:
    """FLOPs of one forward, attention included: SDPA is switched to eager while counting, since torch's counter
    does not see the CPU SDPA kernel."""
    implementation = getattr(model.config, "_attn_implementation", "eager")
    if implementation not in ("eager", None):
        model.set_attn_implementation("eager")
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(pixel_values=pixel_values)
    finally:
        if implementation not in ("eager", None):
            model.set_attn_implementation(implementation)
    return float(counter.get_total_flops())


@dataclass
class BenchResult:
    """One benchmark's figures; ``--json`` prints exactly these keys."""

    model: str
    r: float
    schedule: str
    strategy: str
    batch_size: int
    baseline_clips_per_s: float
    merged_clips_per_s: float
    speedup: float
    flops_ratio: float
    baseline_gflops: float
    merged_gflops: float
    merge_time_fraction: float
    tokens_per_layer: list[int]
    baseline_peak_mb: float
    merged_peak_mb: float
    device: str


def run_bench(
    name_or_path: str,
    r: float,
    *,
    schedule: str = "constant",
    strategy: str = "merge",
    threshold: float | None = None,
    divided: str = "per_frame",
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> BenchResult:
    """Benchmark the unmerged model against the same model merged with the given settings."""
    stages = tqdm(total=5, desc=f"bench {name_or_path}", disable=not progress)
    model = load_model(name_or_path).to(device)
    pixel_values, clips = example_input(model, batch_size)
    pixel_values = pixel_values.to(device)
    stages.update()

    def baseline() -> object:
        return type(model).forward(model, pixel_values=pixel_values)

    def merged() -> object:
        return model(pixel_values=pixel_values)

    baseline_flops = count_flops(model, pixel_values)
    patch(model, r, schedule=schedule, strategy=strategy, threshold=threshold, divided=divided, seed=0)
    merged_flops = count_flops(model, pixel_values)
    stages.update()
    with torch.inference_mode():
        baseline_peak = peak_memory_mb(baseline, device)
        merged_peak = peak_memory_mb(merged, device)
        stages.update()
        baseline_s, merged_s = time_interleaved(
            [baseline, merged], warmup=warmup, repeats=repeats, device=device, desc="timing" if progress else None
        )
        stages.update()
        inside, total = seconds_in_region(merged, MERGE_REGION) if device == "cpu" else (0.0, 1.0)
        stages.update()
    stages.close()
    steps = plan(model).steps()
    return BenchResult(
        model=name_or_path,
        r=r,
        schedule=schedule,
        strategy=strategy,
        batch_size=batch_size,
        baseline_clips_per_s=clips / baseline_s,
        merged_clips_per_s=clips / merged_s,
        speedup=baseline_s / merged_s,
        flops_ratio=baseline_flops / merged_flops,
        baseline_gflops=baseline_flops / clips / 1e9,
        merged_gflops=merged_flops / clips / 1e9,
        merge_time_fraction=inside / total,
        tokens_per_layer=[steps[0].tokens_in] + [s.tokens_out for s in steps],
        baseline_peak_mb=baseline_peak,
        merged_peak_mb=merged_peak,
        device=device,
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``videotome bench``."""
    parser = subparsers.add_parser("bench", help="time a model unmerged and merged in the same process")
    parser.add_argument("--model", required=True, help=f"one of {', '.join(BUILTIN_MODELS)}, or a local directory")
    parser.add_argument("--r", type=parse_r, required=True, help="tokens per layer (int) or a fraction in (0, 1)")
    parser.add_argument("--schedule", default="constant", choices=("constant", "increasing", "decreasing"))
    parser.add_argument("--strategy", default="merge")
    parser.add_argument("--threshold", type=float, default=None, help="cosine threshold of the hybrid strategy")
    parser.add_argument("--divided", default="per_frame", choices=("per_frame", "aligned"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.set_defaults(func=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    result = run_bench(
        args.model,
        args.r,
        schedule=args.schedule,
        strategy=args.strategy,
        threshold=args.threshold,
        divided=args.divided,
        batch_size=args.batch_size,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
    )
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    for key, value in asdict(result).items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:>22}: {shown}")
    return 0
