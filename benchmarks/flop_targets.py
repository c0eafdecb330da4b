"""Whether ``patch(model, flops=T)`` hits its target on the paper-size models: torch's FLOP count of the chosen plan.

    python benchmarks/flop_targets.py [--targets 0.3 0.4 0.5 0.7] [--schedules constant increasing decreasing]

For each base video model (random weights, built on the meta device, so no arithmetic runs and the whole table takes
seconds) and each target, the r that ``flops=`` chooses, the ratio the analytic count predicts, the ratio torch's
FLOP counter counts for one forward of that plan, and the counted ratio one r step less merging would give (which must
exceed the target: the chosen plan merges least). A target is hit when the counted ratio is within 2% of it or below
it by at most that one step.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from paper_points import PAPER_POINTS

import videotome
from videotome.bench import bench_model, count_flops, example_input
from videotome.evaluation.report import to_markdown

HEADER = ["model", "schedule", "target", "r chosen", "predicted ratio", "counted ratio", "counted at r - 1", "hit"]


def counted_ratio(model: torch.nn.Module, pixel_values: torch.Tensor, unmerged: float, **settings: object) -> float:
    """torch's FLOP count of ``model`` patched with ``settings``, over the unmerged count."""
    videotome.patch(model, **settings)
    return count_flops(model, pixel_values) / unmerged


def row(name: str, schedule: str, target: float) -> list[str]:
    """One model, schedule and target: the chosen plan's predicted and counted ratios, and one step less's."""
    with torch.device("meta"):
        model = bench_model(name)
        pixel_values, _ = example_input(model, 1)
    unmerged = count_flops(model, pixel_values)
    counted = counted_ratio(model, pixel_values, unmerged, flops=target, schedule=schedule)
    plan = videotome.plan(model)
    r = plan.settings.r
    less = counted_ratio(model, pixel_values, unmerged, r=r - 1, schedule=schedule) if r > 0 else float("nan")
    hit = counted <= 1.02 * target and (r == 0 or less > target)
    return [name, schedule, f"{target:.2f}", str(r), f"{plan.flop_ratio:.4f}", f"{counted:.4f}", f"{less:.4f}",
            "yes" if hit else "no"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(PAPER_POINTS), default=list(PAPER_POINTS))
    parser.add_argument("--targets", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.7])
    parser.add_argument("--schedules", nargs="+", choices=["constant", "increasing", "decreasing"],
                        default=["constant"])
    args = parser.parse_args(argv)
    bad = [target for target in args.targets if not 0 < target <= 1]
    if bad:
        parser.error(f"--targets must lie in (0, 1], got {bad}")
    body = [row(name, schedule, target) for name in args.models for schedule in args.schedules
            for target in args.targets]
    print(to_markdown(HEADER, body))


if __name__ == "__main__":
    main()
