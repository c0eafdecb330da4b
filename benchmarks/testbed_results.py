"""RESULTS.md's testbed tables and goal checks, from the ``rows.json`` that ``videotome demo --full`` writes.

    python benchmarks/testbed_results.py demo_a/rows.json demo_b/rows.json > tables.md

Prints the operating point, the strategy order, merge over r by schedule, the hybrid thresholds and per-frame
against aligned merging, each as a Markdown table, then the issue's three goals with the numbers that decide them.
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Iterable
from pathlib import Path

import torch

import videotome
from videotome.bench import count_flops
from videotome.testbed.demo import DIVIDED_ARCHITECTURES, STRATEGIES, Row, markdown_table
from videotome.testbed.models import load_checkpoint

PAPER_ORDER = ("merge", "drop", "random_drop", "random_merge")
JOINT_SPEEDUP_GOAL = 2.3
JOINT_ACTION_LOSS_GOAL = 0.01


def operating_rows(rows: list[Row], model: str) -> dict[str, Row]:
    """The unmerged row (key "none") and each strategy's constant-schedule row at the operating point."""
    baseline = next(row for row in rows if row.model == model and row.r == 0)
    drop = next(row for row in rows if row.model == model and row.strategy == "drop")
    found = {"none": baseline}
    for row in rows:
        if row.model == model and row.r == drop.r and row.schedule == "constant" and row.threshold is None:
            if row.strategy in STRATEGIES and row.divided in (None, "per_frame"):
                found.setdefault(row.strategy, row)
    return found


def strategy_ranking(ops: dict[str, Row]) -> tuple[str, ...]:
    """The paper's four strategies ordered by action accuracy at the operating point, best first."""
    return tuple(sorted(PAPER_ORDER, key=lambda name: -ops[name].action))


def section(title: str, rows: Iterable[Row]) -> str:
    """A Markdown heading and table (empty string when there are no rows)."""
    rows = list(rows)
    return f"#### {title}\n\n{markdown_table(rows)}\n" if rows else ""


def report(rows: list[Row]) -> str:
    """Every RESULTS.md table and the goal checks, as Markdown."""
    models = list(dict.fromkeys(row.model for row in rows))
    operating = {model: operating_rows(rows, model) for model in models}
    at_operating_point = [row for ops in operating.values() for row in ops.values()]
    parts = [section("Operating point (constant schedule)", at_operating_point)]
    order_lines = []
    for model, ops in operating.items():
        ranked = strategy_ranking(ops)
        verdict = "as the paper" if ranked == PAPER_ORDER else f"differs from {' > '.join(PAPER_ORDER)}"
        chain = " > ".join(f"{name} ({100 * ops[name].action:.1f})" for name in ranked)
        order_lines.append(f"- {model}: {chain}: {verdict}")
    parts.append("Action accuracy at the operating point, best first:\n\n" + "\n".join(order_lines) + "\n")
    for model in models:
        scaling = [row for row in rows if row.model == model and row.strategy == "merge" and row.divided != "aligned"]
        scaling.sort(key=lambda row: (row.schedule, row.r))
        parts.append(section(f"{model}: merge over r, by schedule", [operating[model]["none"], *scaling]))
    for model in models:
        hybrid = [row for row in rows if row.model == model and row.strategy == "hybrid"]
        parts.append(section(f"{model}: hybrid (merge above the threshold, drop below)", hybrid))
    for model in models:
        if model in DIVIDED_ARCHITECTURES:
            merged = [row for row in rows if row.model == model and row.strategy == "merge"]
            merged.sort(key=lambda row: (row.schedule, row.r, row.divided))
            parts.append(section(f"{model}: per-frame against aligned merging", merged))
    parts.append("Goals:\n\n" + "\n".join(goal_lines(rows, operating)) + "\n")
    return "\n".join(part for part in parts if part)


def flop_ratio(model: str, r: int) -> float:
    """Unmerged FLOPs over merged FLOPs of a packaged testbed model at constant r: the speedup a perfectly
    efficient implementation would reach."""
    network = load_checkpoint(model)
    pixels = torch.zeros(1, network.config.num_frames, 3, network.config.image_size, network.config.image_size)
    return count_flops(network, pixels) / count_flops(videotome.patch(copy.deepcopy(network), r), pixels)


def goal_lines(rows: list[Row], operating: dict[str, dict[str, Row]]) -> list[str]:
    """One line per model and goal, with the numbers that decide it."""
    lines = []
    for model, ops in operating.items():
        base, merged = ops["none"], ops["merge"]
        if model not in DIVIDED_ARCHITECTURES:
            loss = base.action - merged.action
            met = merged.speedup >= JOINT_SPEEDUP_GOAL and loss <= JOINT_ACTION_LOSS_GOAL
            lines.append(
                f"- {model} speed: merge r={merged.r} {merged.speedup:.2f}x "
                f"(FLOP ratio {flop_ratio(model, merged.r):.2f}), action {100 * -loss:+.1f} points: "
                f"{'met' if met else 'not met'}"
            )
            faster = [row for row in rows if row.model == model and row.strategy == "merge"
                      and row.speedup >= JOINT_SPEEDUP_GOAL]
            for row in sorted(faster, key=lambda row: base.action - row.action)[:3]:
                lines.append(
                    f"  - reaches {JOINT_SPEEDUP_GOAL}x: r={row.r} {row.schedule} {row.speedup:.2f}x, "
                    f"action {100 * (row.action - base.action):+.1f} points"
                )
        lines.append(f"- {model} order: {'met' if strategy_ranking(ops) == PAPER_ORDER else 'not met'}")
        if model in DIVIDED_ARCHITECTURES:
            aligned = next(
                row for row in rows
                if row.model == model and row.divided == "aligned" and row.r == merged.r and row.schedule == "constant"
            )
            per_frame_loss, aligned_loss = base.verb - merged.verb, base.verb - aligned.verb
            lines.append(
                f"- {model} aligned: verb {100 * -aligned_loss:+.1f} aligned against {100 * -per_frame_loss:+.1f} "
                f"per frame at r={merged.r}: {'met' if aligned_loss < per_frame_loss else 'not met'}"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, nargs="+", help="rows.json of one or more demos (e.g. one per model group)")
    args = parser.parse_args()
    rows = [Row(**row) for path in args.rows for row in json.loads(path.read_text())["rows"]]
    print(report(rows))


if __name__ == "__main__":
    main()
