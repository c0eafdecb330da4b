"""``videotome tune``: the smallest r that reaches a speedup on this hardware, measured, and its plan file.

The candidates are r values spread evenly over the predicted FLOP ratios the model can reach (:mod:`videotome.flops`);
the unmerged model and every candidate are timed interleaved in one process (as ``videotome bench`` times them), and
further rounds time r values between the last r short of the target and the first that reaches it, until no r lies
between them.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import patch, plan
from .bench import BUILTIN_MODELS, bench_model, example_input
from .evaluation.report import pyplot
from .measure import resolve_device, time_interleaved
from .options import add_options, check_at_least, device_option, from_args
from .plan import MergePlan, MergeSettings, r_for_flops, smallest_flop_ratio, with_r


@dataclass
class TuneConfig:
    """What ``videotome tune`` measures: a model, the speedup to reach, the other merge settings, how to time."""

    model: str = field(metadata={"help": f"one of {', '.join(BUILTIN_MODELS)}, or a local checkpoint directory"})
    speedup: float = field(metadata={"help": "the speedup over the unmerged model to reach (> 1)"})
    merge: MergeSettings = field(
        default_factory=MergeSettings, metadata={"help": "merge settings besides r (videotome.patch)"}
    )
    batch_size: int = field(default=1, metadata={"help": "clips per forward pass"})
    points: int = field(default=6, metadata={"help": "r values timed in each round"})
    repeats: int = field(default=3, metadata={"help": "timed rounds (median)"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    device: str | None = device_option()
    plot: str = field(default="tune.png", metadata={"help": "where the measured speedup curve goes"})

    def __post_init__(self) -> None:
        if self.speedup <= 1:
            raise ValueError(f"speedup={self.speedup} must be above 1 (the unmerged model's speed is 1)")
        check_at_least(self, 1, "batch_size", "points", "repeats")
        check_at_least(self, 0, "warmup")
        if self.merge.r != 0:
            raise ValueError("tune chooses r; give the other merge settings only")
        if not isinstance(self.merge.schedule, str):
            raise ValueError("tune scales a named schedule; a schedule list already fixes every layer's r")


@dataclass
class TunePoint:
    """One measured r: its predicted FLOP ratio and its speedup over the unmerged model."""

    r: int
    flop_ratio: float
    speedup: float


@dataclass
class TuneResult:
    """The chosen plan (None when no r reached the speedup) and every measured point, by r."""

    plan: MergePlan | None
    points: list[TunePoint]
    device: str

    def to_dict(self, config: TuneConfig) -> dict[str, object]:
        """The plan file (``patch(model, plan=...)``, ``videotome eval --plan``), with what was measured."""
        tuned = {"model": config.model, "speedup": config.speedup, "batch_size": config.batch_size,
                 "device": self.device, "curve": [asdict(point) for point in self.points]}
        return {**self.plan.to_dict(), "tuned": tuned}


def _view(model: nn.Module, settings: MergeSettings) -> nn.Module:
    """``model`` patched as ``settings`` say, leaving it as it is: a shallow copy shares every module and weight,
    and patching sets only the copy's own attributes, so many views cost no memory."""
    return patch(copy.copy(model), settings)


def _measure(model: nn.Module, template: MergePlan, rs: list[int], config: TuneConfig, pixel_values: torch.Tensor,
             device: torch.device, desc: str) -> list[TunePoint]:
    """The unmerged model and each r timed interleaved; the speedup of each r."""
    views = [_view(model, replace(template.settings, r=r)) for r in rs]

    def run(view: nn.Module):
        return lambda: view(pixel_values=pixel_values)

    calls = [lambda: type(model).forward(model, pixel_values=pixel_values), *map(run, views)]
    with torch.inference_mode():
        unmerged, *merged = time_interleaved(calls, warmup=config.warmup, repeats=config.repeats, device=device,
                                             desc=desc)
    return [TunePoint(r, with_r(template, r).flop_ratio, unmerged / seconds) for r, seconds in zip(rs, merged)]


def _between(low: int, high: int, count: int) -> list[int]:
    """Up to ``count`` r values evenly spread strictly between ``low`` and ``high``."""
    return sorted({low + (high - low) * (i + 1) // (count + 1) for i in range(count)} - {low, high})


def run_tune(config: TuneConfig, *, progress: bool = True) -> TuneResult:
    """Time r values of ``config.model`` against the unmerged model and choose the smallest that reaches the speedup."""
    device = resolve_device(config.device)
    model = bench_model(config.model).to(device)
    pixel_values = example_input(model, config.batch_size)[0].to(device)
    template = plan(_view(model, config.merge))
    smallest = smallest_flop_ratio(template)
    targets = [1 - (1 - smallest) * (i + 1) / config.points for i in range(config.points)]
    rs = sorted({r_for_flops(target, template) for target in targets})
    points: list[TunePoint] = []
    rounds = 0
    while rs:  # each round narrows the gap between the last r short of the target and the first that reaches it
        rounds += 1
        desc = f"tune: round {rounds}" if progress else None
        points = sorted(points + _measure(model, template, rs, config, pixel_values, device, desc),
                        key=lambda point: point.r)
        reached = [point for point in points if point.speedup >= config.speedup]
        if not reached:
            break
        below = max([0] + [point.r for point in points if point.r < reached[0].r])
        rs = _between(below, reached[0].r, config.points)
    reached = [point for point in points if point.speedup >= config.speedup]
    chosen = None if not reached else plan(_view(model, replace(config.merge, r=reached[0].r)))
    return TuneResult(chosen, points, str(device))


def plot_curve(result: TuneResult, config: TuneConfig, path: str | Path) -> None:
    """The measured speedup over r, the FLOP bound (1 / predicted FLOP ratio), the target and the chosen r."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    rs = [point.r for point in result.points]
    axes.plot(rs, [point.speedup for point in result.points], "o-", label="measured speedup")
    axes.plot(rs, [1 / point.flop_ratio for point in result.points], "--", color="grey",
              label="1 / predicted FLOP ratio")
    axes.axhline(config.speedup, color="red", linewidth=0.8, label=f"target {config.speedup:g}x")
    if result.plan is not None:
        axes.axvline(result.plan.settings.r, color="green", linewidth=0.8, label=f"chosen r = {result.plan.settings.r}")
    schedule = config.merge.schedule if isinstance(config.merge.schedule, str) else "explicit"
    axes.set(xlabel=f"r ({schedule} schedule)", ylabel="speedup over the unmerged model",
             title=f"{Path(config.model).name}, batch {config.batch_size}, {result.device}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``videotome tune``."""
    parser = subparsers.add_parser("tune", help="the smallest r that reaches a speedup on this hardware, measured")
    add_options(parser, TuneConfig, exclude=("r",))
    parser.add_argument("--json", action="store_true", help="print the chosen plan file (JSON) instead of a table")
    parser.set_defaults(func=_tune_command)


def _tune_command(args: argparse.Namespace) -> int:
    config = from_args(TuneConfig, args)
    result = run_tune(config)
    plot_curve(result, config, config.plot)
    if result.plan is None:
        best = max(result.points, key=lambda point: point.speedup)
        raise ValueError(f"no r reaches a speedup of {config.speedup:g}: the best measured is {best.speedup:.2f}x "
                         f"at r={best.r} (curve in {config.plot})")
    if args.json:
        print(json.dumps(result.to_dict(config)))
        return 0
    print("     r  FLOP ratio  speedup")
    for point in result.points:
        print(f"{point.r:>6}  {point.flop_ratio:>10.3f}  {point.speedup:>7.2f}")
    print(f"smallest r reaching {config.speedup:g}x: {result.plan.settings.r} (curve in {config.plot})")
    return 0
