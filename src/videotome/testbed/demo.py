"""``videotome demo``: what token merging does to accuracy and speed, on the packaged testbed models, on a CPU.

Each model is evaluated unmerged and with every reduction setting on the same validation clips through
:func:`videotome.evaluation.tensors.evaluate_tensors` (so ``results.jsonl`` has the ``videotome eval`` format), then
all of one model's settings are timed together, interleaved (:func:`videotome.measure.time_interleaved`), so that
speedups stay honest on a machine shared with other work.

The default setting is the paper's operating point with the constant schedule: about 9.6% of the initial tokens
removed per layer for the joint space-time models (VideoMAE, ViViT) and 18/196 of each frame's tokens for the divided
ones (TimeSformer, Motionformer), with merge, drop, random_drop and random_merge. ``full=True`` adds the paper's
analyses: scaling over r for the three schedules, the hybrid threshold, and per-frame against aligned merging.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import videotome

from ..adapters import find_adapter
from ..evaluation.report import to_markdown
from ..heads import format_heads, model_heads
from ..evaluation.tensors import TensorClips, evaluate_tensors
from ..measure import time_interleaved
from ..plan import MergeSettings, resolve_r
from .data import VALIDATION_SIZE, validation_set
from .models import ARCHITECTURES, CHECKPOINTS, load_checkpoint, require_checkpoint, select_frames

DIVIDED_ARCHITECTURES = ("timesformer", "motionformer")
#: the paper's operating point: share of the initial tokens removed per layer (per frame for divided models)
OPERATING_SHARE = {"joint": 0.096, "divided": 18 / 196}
STRATEGIES = ("merge", "drop", "random_drop", "random_merge")
SCHEDULES = ("constant", "increasing", "decreasing")
THRESHOLDS = (0.5, 0.7, 0.9)
SCALING_SHARES = (0.03, 0.06, 0.096, 0.13)
SEED = 0


@dataclass(frozen=True)
class Setting:
    """One reduction setting; ``r = 0`` is the unmerged model."""

    r: int = 0
    strategy: str = "none"
    schedule: str = "none"
    divided: str | None = None
    threshold: float | None = None

    @property
    def name(self) -> str:
        parts = [self.strategy, f"r={self.r}", self.schedule]
        parts += [f"threshold={self.threshold}"] if self.threshold is not None else []
        parts += [self.divided] if self.divided else []
        return " ".join(parts)


@dataclass
class Row:
    """One line of the demo table (accuracies as fractions)."""

    model: str
    strategy: str
    r: int
    schedule: str
    divided: str | None
    threshold: float | None
    verb: float
    noun: float
    action: float
    clips_per_s: float
    speedup: float = field(default=1.0)


def is_divided(arch: str) -> bool:
    """Whether the architecture uses divided space-time attention (merging per frame)."""
    return arch in DIVIDED_ARCHITECTURES


def operating_r(model: torch.nn.Module, arch: str, share: float | None = None) -> int:
    """Tokens per layer (per frame for divided models) removing ``share`` of the initial tokens (default: the
    paper's operating point)."""
    share = OPERATING_SHARE["divided" if is_divided(arch) else "joint"] if share is None else share
    return max(1, resolve_r(share, find_adapter(model).layout(model)))


def default_settings(model: torch.nn.Module, arch: str) -> list[Setting]:
    """The unmerged model and the four strategies at the operating point, constant schedule."""
    r = operating_r(model, arch)
    divided = "per_frame" if is_divided(arch) else None
    return [Setting()] + [Setting(r, strategy, "constant", divided) for strategy in STRATEGIES]


def full_settings(model: torch.nn.Module, arch: str) -> list[Setting]:
    """The paper's analyses: schedules over r, hybrid thresholds, and (divided models) aligned merging."""
    settings = default_settings(model, arch)
    r = operating_r(model, arch)
    divided = "per_frame" if is_divided(arch) else None
    scaling = sorted({operating_r(model, arch, share) for share in SCALING_SHARES} | {r})
    if is_divided(arch):
        scaling = sorted(set(scaling) | {r + 1, r + 2})  # a frame holds few tokens: each extra one is a real step
    settings += [Setting(value, "merge", schedule, divided) for value in scaling for schedule in SCHEDULES]
    settings += [Setting(r, "hybrid", "constant", divided, threshold) for threshold in THRESHOLDS]
    if is_divided(arch):
        settings += [Setting(value, "merge", schedule, "aligned") for value in scaling for schedule in SCHEDULES]
    unique: dict[Setting, None] = dict.fromkeys(settings)
    return list(unique)


def merge_settings_of(setting: Setting) -> MergeSettings:
    """The library's settings value of a demo setting."""
    if setting.r == 0:
        return MergeSettings()
    return MergeSettings(
        setting.r,
        schedule=setting.schedule,
        strategy=setting.strategy,
        threshold=setting.threshold,
        divided=setting.divided or "per_frame",
        seed=SEED,
    )


def patched_copy(model: torch.nn.Module, setting: Setting, *, trace_source: bool = False) -> torch.nn.Module:
    """A copy of ``model`` reduced as ``setting`` says (the unmerged model itself for r = 0)."""
    if setting.r == 0:
        return model
    return videotome.patch(copy.deepcopy(model), merge_settings_of(setting), trace_source=trace_source)


def _run_settings(arch: str, model: torch.nn.Module, setting: Setting, clips: int) -> dict[str, Any]:
    """The settings that identify a run in ``results.jsonl`` (the ``videotome eval`` keys)."""
    return {
        "model": f"testbed-{arch}",
        "model_type": model.config.model_type,
        "dataset": "testbed",
        "limit": clips,
        "merge": merge_settings_of(setting).to_dict(),
        "heads": format_heads(model_heads(model.config)),
    }


def evaluate_model(
    arch: str,
    clips: TensorClips,
    settings_of: Callable[[torch.nn.Module, str], list[Setting]],
    results: Path,
    *,
    batch_size: int,
    timing_clips: int,
    repeats: int,
    progress: bool,
    checkpoints: str | Path = CHECKPOINTS,
) -> list[Row]:
    """Accuracy of every setting of one model on ``clips``, and their speed timed together; one row each."""
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
    baseline_rate = timing_clips / seconds[0]
    rows = []
    for setting, variant, took in zip(settings, variants, seconds):
        rate = timing_clips / took
        throughput = {"model_clips_per_s": rate, "model_frames_per_s": rate * frames, "timing": "interleaved",
                      "timing_batch": timing_clips, "timing_repeats": repeats}
        summary = evaluate_tensors(
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
        metrics = summary["metrics"]
        rows.append(
            Row(
                model=arch,
                strategy=setting.strategy,
                r=setting.r,
                schedule=setting.schedule,
                divided=setting.divided,
                threshold=setting.threshold,
                verb=metrics["verb_top1"],
                noun=metrics["noun_top1"],
                action=metrics["action_top1"],
                clips_per_s=rate,
                speedup=rate / baseline_rate,
            )
        )
    return rows


def validation_clips(limit: int) -> TensorClips:
    """The first ``limit`` validation clips, as model input."""
    data = validation_set(limit)
    ids = [f"val-{index:04d}" for index in range(limit)]
    return TensorClips(ids, data.pixels(), {"verb": data.verb, "noun": data.noun})


def run_demo(
    models: Sequence[str] = ARCHITECTURES,
    *,
    limit: int = 512,
    out: str | Path = "demo_out",
    full: bool = False,
    batch_size: int = 128,
    timing_clips: int = 128,
    repeats: int = 3,
    progress: bool = True,
    checkpoints: str | Path = CHECKPOINTS,
) -> list[Row]:
    """Evaluate the testbed models (by default the packaged checkpoints) and write ``table.md``, ``results.jsonl``,
    ``rows.json`` and the figures into ``out``."""
    from .visualize import plot_accuracy_vs_speedup, plot_merges

    unknown = [name for name in models if name not in ARCHITECTURES]
    if unknown:
        raise ValueError(f"unknown testbed models {unknown}; expected some of {ARCHITECTURES}")
    if not 1 <= limit <= VALIDATION_SIZE:
        raise ValueError(f"limit must be between 1 and {VALIDATION_SIZE} (validation clips), got {limit}")
    for arch in models:  # every checkpoint is there before any work starts
        require_checkpoint(arch, checkpoints)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    clips = validation_clips(limit)
    timing_clips = min(timing_clips, limit)
    rows: list[Row] = []
    for arch in tqdm(models, desc="demo", unit="model", disable=not progress):
        rows += evaluate_model(
            arch,
            clips,
            full_settings if full else default_settings,
            results,
            batch_size=batch_size,
            timing_clips=timing_clips,
            repeats=repeats,
            progress=progress,
            checkpoints=checkpoints,
        )
    (out / "table.md").write_text(markdown_table(rows))
    (out / "rows.json").write_text(json.dumps(table_json(rows), indent=1) + "\n")
    plot_accuracy_vs_speedup(rows, out / "accuracy_vs_speedup.png")
    plot_merges(models, clips.pixels[0], out / "merges.png", checkpoints)
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    """The paper-style table: accuracies in percent, clips/s and speedup against the unmerged model."""
    header = ["model", "strategy", "r", "schedule", "options", "verb", "noun", "action", "clips/s", "speedup"]
    body = []
    for row in rows:
        options = " ".join(
            ([row.divided] if row.divided else []) + ([f"threshold={row.threshold}"] if row.threshold else [])
        )
        body.append(
            [row.model, row.strategy, str(row.r), row.schedule, options]
            + [f"{100 * value:.2f}" for value in (row.verb, row.noun, row.action)]
            + [f"{row.clips_per_s:.1f}", f"{row.speedup:.2f}x"]
        )
    return to_markdown(header, body)


def table_json(rows: Sequence[Row]) -> dict[str, list[dict[str, Any]]]:
    """The table as ``{"rows": [...]}`` (accuracies as fractions)."""
    return {"rows": [asdict(row) for row in rows]}
