"""``videotome bench``: the unmerged and the merged model timed in one process, with FLOPs and peak memory.

Built-in names build the paper's base models from their configurations with random weights (timing does not
depend on the weights, and nothing is downloaded); a local directory loads a real checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from . import patch, plan
from .patch import _patch_of
from .loading import IMAGE_MODEL_TYPES, load_local_model
from .measure import peak_memory_mb, resolve_device, seconds_in_steps, time_interleaved
from .options import add_options, check_at_least, device_option, from_args
from .plan import MergeSettings

#: frames of a clip for an image model, which sees them as a batch
IMAGE_FRAMES_PER_CLIP = 8


def _model_classes() -> dict[str, tuple[type, type[nn.Module]]]:
    """The configuration and model class of each family a model with random weights can be built for."""
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
        "videomae": (VideoMAEConfig, VideoMAEForVideoClassification),
        "vivit": (VivitConfig, VivitForVideoClassification),
        "timesformer": (TimesformerConfig, TimesformerForVideoClassification),
        "motionformer": (MotionformerConfig, MotionformerForVideoClassification),
        "dinov2": (Dinov2Config, Dinov2Model),
    }


def random_model(family: str, **settings: object) -> nn.Module:
    """A model of ``family`` (videomae, vivit, timesformer, motionformer, dinov2) built from its configuration
    with ``settings``, with random weights from torch's global generator, in eval mode."""
    config_class, model_class = _model_classes()[family]
    return model_class(config_class(**settings)).eval()


#: the built-in models (the paper's base models): name -> family and configuration settings
_BUILTINS: dict[str, tuple[str, dict[str, object]]] = {
    "videomae-base": ("videomae", {"num_labels": 400}),
    "vivit-base": ("vivit", {"num_labels": 400}),
    "timesformer-base": ("timesformer", {"num_labels": 400}),
    "motionformer-base": ("motionformer", {"num_labels": 400}),
    "dinov2-small": ("dinov2", {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                                "patch_size": 14, "image_size": 224}),
}
BUILTIN_MODELS = tuple(_BUILTINS)


def bench_model(name_or_path: str) -> nn.Module:
    """A built-in base model with random weights, or a model from a local Hugging Face directory."""
    if name_or_path in _BUILTINS:
        torch.manual_seed(0)
        family, settings = _BUILTINS[name_or_path]
        return random_model(family, **settings)
    if not Path(name_or_path).is_dir():
        raise ValueError(f"--model {name_or_path!r} is neither a built-in name {BUILTIN_MODELS} nor a local directory")
    return load_local_model(name_or_path)


def zero_cost_ideal(model: nn.Module, settings: MergeSettings) -> nn.Module:
    """The zero-cost ideal of ``settings`` for benchmarks: a shallow copy of ``model`` (sharing its modules and
    weights) patched with the same plan, whose token counts per layer are the merged model's, but whose removal is a
    free slice keeping each sequence's (divided models: each frame's) first tokens, with no matching and no averaging
    (:attr:`~videotome.plan.MergePlan.free_removal`). The merged model's time over this one's is how close merging
    comes to the limit that its token counts allow."""
    ideal = patch(copy.copy(model), settings)
    record = _patch_of(ideal)
    record.plan = replace(record.plan, free_removal=True)
    return ideal


def example_input(model: nn.Module, batch_size: int) -> tuple[torch.Tensor, int]:
    """Random pixel values of the model's configured clip shape (its config's image size, which also sets the token
    layout that fractional r and ``tokens_per_layer`` come from), and how many clips they hold."""
    config = model.config
    size = config.image_size
    if config.model_type in IMAGE_MODEL_TYPES:
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
class BenchConfig:
    """One benchmark: a model, the reduction to compare with it unmerged, and how to time them."""

    model: str = field(metadata={"help": f"one of {', '.join(BUILTIN_MODELS)}, or a local checkpoint directory"})
    merge: MergeSettings = field(default_factory=MergeSettings, metadata={"help": "token reduction (videotome.patch)"})
    batch_size: int = field(default=1, metadata={"help": "clips per forward pass"})
    repeats: int = field(default=5, metadata={"help": "timed rounds (median)"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    device: str | None = device_option()

    def __post_init__(self) -> None:
        check_at_least(self, 1, "batch_size", "repeats")
        check_at_least(self, 0, "warmup")


@dataclass
class BenchResult:
    """One benchmark's figures; ``--json`` prints exactly these keys."""

    model: str
    merge: dict
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


def run_bench(config: BenchConfig, *, progress: bool = True) -> BenchResult:
    """Benchmark the unmerged model against the same model merged as ``config.merge`` says."""
    device = resolve_device(config.device)
    stages = tqdm(total=5, desc=f"bench {config.model}", disable=not progress)
    model = bench_model(config.model).to(device)
    pixel_values, clips = example_input(model, config.batch_size)
    pixel_values = pixel_values.to(device)
    stages.update()

    def baseline() -> object:
        return type(model).forward(model, pixel_values=pixel_values)

    def merged() -> object:
        return model(pixel_values=pixel_values)

    baseline_flops = count_flops(model, pixel_values)
    patch(model, config.merge)
    merged_flops = count_flops(model, pixel_values)
    stages.update()
    with torch.inference_mode():
        baseline_peak = peak_memory_mb(baseline, device)
        merged_peak = peak_memory_mb(merged, device)
        stages.update()
        baseline_s, merged_s = time_interleaved(
            [baseline, merged],
            warmup=config.warmup,
            repeats=config.repeats,
            device=device,
            desc="timing" if progress else None,
        )
        stages.update()
        inside, total = seconds_in_steps(merged) if device.type == "cpu" else (0.0, 1.0)
        stages.update()
    stages.close()
    steps = plan(model).steps()
    return BenchResult(
        model=config.model,
        merge=config.merge.to_dict(),
        batch_size=config.batch_size,
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
        device=str(device),
    )


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``videotome bench``."""
    parser = subparsers.add_parser("bench", help="time a model unmerged and merged in the same process")
    add_options(parser, BenchConfig)
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    parser.set_defaults(func=_bench_command)


def _bench_command(args: argparse.Namespace) -> int:
    result = asdict(run_bench(from_args(BenchConfig, args)))
    if args.json:
        print(json.dumps(result))
        return 0
    for key, value in result.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:>22}: {shown}")
    return 0
