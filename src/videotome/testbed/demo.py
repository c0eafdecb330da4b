"""``videotome demo``: what token merging does to accuracy and speed, on the packaged testbed models, on a CPU.

Each model is evaluated unmerged and with every reduction setting (:mod:`.settings`) on the same validation clips
through :func:`videotome.evaluation.tensors.evaluate_tensors`, so ``results.jsonl`` has the ``videotome eval``
format; all of one model's settings are timed together, interleaved (:func:`videotome.measure.time_interleaved`),
so that speedups stay honest on a machine shared with other work. The table and the accuracy plots are then
``videotome report``'s, made from that ``results.jsonl`` (:func:`videotome.evaluation.report.write_report`), and
``merges.png`` shows which patches each merged token holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..evaluation.report import write_report
from ..evaluation.tensors import TensorClips, evaluate_tensors
from ..heads import format_heads, model_heads
from ..measure import time_interleaved
from ..options import option
from ..plan import MergeSettings
from .data import VALIDATION_SIZE, validation_set
from .models import ARCHITECTURES, CHECKPOINTS, load_checkpoint, require_checkpoint, select_frames
from .settings import default_settings, full_settings, patched_copy
from .visualize import plot_merges

#: validation clips the default table scores without ``limit`` (``full`` scores all of them)
DEFAULT_LIMIT = 512


@dataclass
class DemoConfig:
    """A demo run; every field is a ``videotome demo`` flag."""

    models: tuple[str, ...] = option(ARCHITECTURES, "testbed models to evaluate", choices=ARCHITECTURES)
    limit: int | None = option(
        None, f"validation clips, at least 1 (default {DEFAULT_LIMIT}, --full {VALIDATION_SIZE})"
    )
    out: str = option("demo_out", "output directory")
    full: bool = option(False, "the paper's analyses: schedules, thresholds, aligned")
    batch_size: int = option(128, "clips per forward pass when scoring")
    timing_clips: int = option(128, "batch size of the interleaved timing")
    repeats: int = option(3, "timed rounds per setting (median)")
    checkpoints: str = option(str(CHECKPOINTS), "directory with one checkpoint per model")
    progress: bool = option(True, "hide progress bars", flag="--no-progress")

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        unknown = [name for name in self.models if name not in ARCHITECTURES]
        if unknown:
            raise ValueError(f"unknown testbed models {unknown}; expected some of {ARCHITECTURES}")
        if self.limit is not None and not 1 <= self.limit <= VALIDATION_SIZE:
            raise ValueError(f"limit must be between 1 and {VALIDATION_SIZE} (validation clips), got {self.limit}")
        for name in ("batch_size", "timing_clips", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def clips(self) -> int:
        """The validation clips scored: ``limit``, else all of them with ``full``, else :data:`DEFAULT_LIMIT`."""
        if self.limit is not None:
            return self.limit
        return VALIDATION_SIZE if self.full else DEFAULT_LIMIT


def _run_settings(arch: str, model: torch.nn.Module, settings: MergeSettings, clips: int) -> dict[str, Any]:
    """The settings that identify a run in ``results.jsonl`` (the ``videotome eval`` keys)."""
    return {
        "model": f"testbed-{arch}",
        "model_type": model.config.model_type,
        "dataset": "testbed",
        "limit": clips,
        "merge": settings.to_dict(),
        "heads": format_heads(model_heads(model.config)),
    }


def evaluate_model(
    arch: str,
    clips: TensorClips,
    settings_of: Callable[[torch.nn.Module, str], list[MergeSettings]],
    results: Path,
    *,
    batch_size: int,
    timing_clips: int,
    repeats: int,
    progress: bool,
    checkpoints: str | Path = CHECKPOINTS,
) -> None:
    """Append to ``results`` one run per setting of one model on ``clips``: its accuracy, and its speed from the
    timing of all the settings together."""
    model = load_checkpoint(arch, checkpoints)
    settings = settings_of(model, arch)
    variants = [patched_copy(model, setting) for setting in settings]
    frames = int(model.config.num_frames)

    def prepare(pixels: torch.Tensor) -> torch.Tensor:
        return select_frames(model, pixels)

    timing_input = prepare(clips.pixels[:timing_clips])

    def forward(variant: torch.nn.Module) -> Any:
        with torch.inference_mode():
            return variant(pixel_values=timing_input)

    seconds = time_interleaved(
        [lambda variant=variant: forward(variant) for variant in variants],
        warmup=1,
        repeats=repeats,
        desc=f"time {arch}" if progress else None,
    )
    for setting, variant, took in zip(settings, variants, seconds):
        rate = timing_clips / took
        throughput = {"model_clips_per_s": rate, "model_frames_per_s": rate * frames, "timing": "interleaved",
                      "timing_batch": timing_clips, "timing_repeats": repeats}
        evaluate_tensors(
            variant,
            clips,
            _run_settings(arch, model, setting, len(clips.ids)),
            results,
            heads=model_heads(model.config),
            batch_size=batch_size,
            prepare=prepare,
            throughput=throughput,
            progress=progress,
        )


def validation_clips(limit: int) -> TensorClips:
    """The first ``limit`` validation clips, as model input."""
    data = validation_set(limit)
    ids = [f"val-{index:04d}" for index in range(limit)]
    return TensorClips(ids, data.pixels(), {"verb": data.verb, "noun": data.noun})


def run_demo(config: DemoConfig | None = None, /, **options: Any) -> dict[str, Any]:
    """Evaluate the testbed models (by default the packaged checkpoints) into ``out/results.jsonl``, then write the
    report of those results (``table.md``, ``table.csv``, the accuracy plots) and ``merges.png`` into ``out``.

    Takes a :class:`DemoConfig`, or its fields as keywords (which also replace those of a given config). Returns
    :func:`~videotome.evaluation.report.write_report`'s paths, table and rows, with ``merges`` added.
    """
    config = replace(config, **options) if config is not None else DemoConfig(**options)
    for arch in config.models:  # every checkpoint is there before any work starts
        require_checkpoint(arch, config.checkpoints)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    clips = validation_clips(config.clips)
    for arch in tqdm(config.models, desc="demo", unit="model", disable=not config.progress):
        evaluate_model(
            arch,
            clips,
            full_settings if config.full else default_settings,
            results,
            batch_size=config.batch_size,
            timing_clips=min(config.timing_clips, config.clips),
            repeats=config.repeats,
            progress=config.progress,
            checkpoints=config.checkpoints,
        )
    report = write_report([results], out)
    report["merges"] = plot_merges(config.models, clips.pixels[0], out / "merges.png", config.checkpoints)
    return report
