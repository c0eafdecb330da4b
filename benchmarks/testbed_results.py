"""RESULTS.md's testbed tables and goal checks, from the ``results.jsonl`` that ``videotome demo --full`` writes.

    python benchmarks/testbed_results.py demo_a/results.jsonl demo_b/results.jsonl > tables.md

Prints the operating point, the strategy order, merge over r by schedule, the hybrid thresholds and per-frame
against aligned merging, each as a Markdown table, then the issue's three goals with the numbers that decide them.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from pathlib import Path

import torch

import videotome
from videotome.bench import count_flops
from videotome.evaluation.report import TableRow, collect_rows, table, to_markdown
from videotome.testbed.models import load_checkpoint
from videotome.testbed.settings import DEFAULT_STRATEGIES, is_divided

PAPER_ORDER = ("merge", "drop", "random_drop", "random_merge")
JOINT_SPEEDUP_GOAL = 2.3
JOINT_ACTION_LOSS_GOAL = 0.01


def accuracy(row: TableRow, head: str) -> float:
    """A row's top-1 accuracy of ``head`` (verb, noun or action) on the testbed, as a fraction."""
    return row.accuracy["testbed"][f"{head}_top1"]


def operating_rows(rows: list[TableRow], model: str) -> dict[str, TableRow]:
    """The unmerged row (key "none") and each strategy's constant-schedule row at the operating point."""
    baseline = next(row for row in rows if row.model == model and not row.merge.reduces)
    drop = next(row for row in rows if row.model == model and row.strategy == "drop")
    found = {"none": baseline}
    for row in rows:
        if row.model == model and row.merge.r == drop.merge.r and row.schedule == "constant":
            if row.strategy in DEFAULT_STRATEGIES and row.merge.divided == "per_frame":
                found.setdefault(row.strategy, row)
    return found


def strategy_ranking(ops: dict[str, TableRow]) -> tuple[str, ...]:
    """The paper's four strategies ordered by action accuracy at the operating point, best first."""
    return tuple(sorted(PAPER_ORDER, key=lambda name: -accuracy(ops[name], "action")))


def section(title: str, rows: Iterable[TableRow]) -> str:
    """A Markdown heading and table (empty string when there are no rows)."""
    rows = list(rows)
    return f"#### {title}\n\n{to_markdown(*table(rows))}\n" if rows else ""


def report(rows: list[TableRow]) -> str:
    """Every RESULTS.md table and the goal checks, as Markdown."""
    models = list(dict.fromkeys(row.model for row in rows))
    operating = {model: operating_rows(rows, model) for model in models}
    at_operating_point = [row for ops in operating.values() for row in ops.values()]
    parts = [section("Operating point (constant schedule)", at_operating_point)]
    order_lines = []
    for model, ops in operating.items():
        ranked = strategy_ranking(ops)
        verdict = "as the paper" if ranked == PAPER_ORDER else f"differs from {' > '.join(PAPER_ORDER)}"
        chain = " > ".join(f"{name} ({100 * accuracy(ops[name], 'action'):.1f})" for name in ranked)
        order_lines.append(f"- {model}: {chain}: {verdict}")
    parts.append("Action accuracy at the operating point, best first:\n\n" + "\n".join(order_lines) + "\n")
    for model in models:
        scaling = [row for row in rows
                   if row.model == model and row.strategy == "merge" and row.merge.divided != "aligned"]
        scaling.sort(key=lambda row: (row.schedule, row.merge.r))
        parts.append(section(f"{model}: merge over r, by schedule", [operating[model]["none"], *scaling]))
    for model in models:
        hybrid = [row for row in rows if row.model == model and row.strategy == "hybrid"]
        parts.append(section(f"{model}: hybrid (merge above the threshold, drop below)", hybrid))
    for model in models:
        if is_divided(model):
            merged = [row for row in rows if row.model == model and row.strategy == "merge"]
            merged.sort(key=lambda row: (row.schedule, row.merge.r, row.merge.divided))
            parts.append(section(f"{model}: per-frame against aligned merging", merged))
    parts.append("Goals:\n\n" + "\n".join(goal_lines(rows, operating)) + "\n")
    return "\n".join(part for part in parts if part)


def flop_ratio(model: str, r: int) -> float:
    """Unmerged FLOPs over merged FLOPs of a packaged testbed model at constant r: the speedup a perfectly
    efficient implementation would reach."""
    network = load_checkpoint(model)
    pixels = torch.zeros(1, network.config.num_frames, 3, network.config.image_size, network.config.image_size)
    return count_flops(network, pixels) / count_flops(videotome.patch(copy.deepcopy(network), r), pixels)


def goal_lines(rows: list[TableRow], operating: dict[str, dict[str, TableRow]]) -> list[str]:
    """One line per model and goal, with the numbers that decide it."""
    lines = []
    for model, ops in operating.items():
        base, merged = ops["none"], ops["merge"]
        if not is_divided(model):
            loss = accuracy(base, "action") - accuracy(merged, "action")
            met = merged.speedup >= JOINT_SPEEDUP_GOAL and loss <= JOINT_ACTION_LOSS_GOAL
            lines.append(
                f"- {model} speed: merge r={merged.merge.r} {merged.speedup:.2f}x "
                f"(FLOP ratio {flop_ratio(model, merged.merge.r):.2f}), action {100 * -loss:+.1f} points: "
                f"{'met' if met else 'not met'}"
            )
            faster = [row for row in rows if row.model == model and row.strategy == "merge"
                      and row.speedup >= JOINT_SPEEDUP_GOAL]
            for row in sorted(faster, key=lambda row: accuracy(base, "action") - accuracy(row, "action"))[:3]:
                lines.append(
                    f"  - reaches {JOINT_SPEEDUP_GOAL}x: r={row.merge.r} {row.schedule} {row.speedup:.2f}x, "
                    f"action {100 * (accuracy(row, 'action') - accuracy(base, 'action')):+.1f} points"
                )
        lines.append(f"- {model} order: {'met' if strategy_ranking(ops) == PAPER_ORDER else 'not met'}")
        if is_divided(model):
            aligned = next(
                row for row in rows
                if row.model == model and row.merge.divided == "aligned" and row.merge.r == merged.merge.r
                and row.schedule == "constant"
            )
            per_frame_loss = accuracy(base, "verb") - accuracy(merged, "verb")
            aligned_loss = accuracy(base, "verb") - accuracy(aligned, "verb")
            lines.append(
                f"- {model} aligned: verb {100 * -aligned_loss:+.1f} aligned against {100 * -per_frame_loss:+.1f} "
                f"per frame at r={merged.merge.r}: {'met' if aligned_loss < per_frame_loss else 'not met'}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+",
                        help="results.jsonl of one or more demos (e.g. one per model group)")
    args = parser.parse_args()
    print(report(collect_rows(args.results, by="family")))


if __name__ == "__main__":
    main()
