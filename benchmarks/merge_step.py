"""The merge step alone: its time, split into matching and merging, and how many tensor operations it dispatches.

    OMP_NUM_THREADS=1 python benchmarks/merge_step.py [--repeats 7] [--jsonl merge_step.jsonl]

At small sizes a merge step costs what its operations cost to dispatch, whatever their size, so the operation count
times the cost of the cheapest operation (an addition of two one-element tensors, timed here too) is the floor that
eager PyTorch puts under it; at large sizes it costs its copies and its matrix product. Shapes: the testbed models'
layer (128 tokens of 64 channels, r = 12) at batch 1 to 256, VideoMAE-B's first layer at the paper's point
(1568 x 768, r = 150, keys of 64 channels averaged over heads) and a divided model's frames (8 frames of 196 tokens,
r = 18). Each shape is timed with the step and its parts interleaved (median of ``--repeats`` rounds after one
untimed round).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from paper_points import PAPER_POINTS
from torch.utils._python_dispatch import TorchDispatchMode

from videotome import merge
from videotome.evaluation.report import to_markdown
from videotome.measure import time_rounds

#: (name, batch, tokens, channels, metric channels, r, protect_first); the paper-size shapes at their paper's r
SHAPES = [
    *[(f"testbed, batch {batch}", batch, 128, 64, 16, 12, True) for batch in (1, 4, 16, 64, 128, 256)],
    ("VideoMAE-B first layer", 1, 1568, 768, 64, PAPER_POINTS["videomae-base"][0], False),
    ("TimeSformer-B frames, batch 1", 8, 196, 768, 64, PAPER_POINTS["timesformer-base"][0], False),
]
HEADER = ["shape", "B x N x C, r", "step us", "matching us", "merging us", "ops per step", "ops x floor us"]


class _OpCounter(TorchDispatchMode):
    """Counts the operations that reach torch's dispatcher (views included: each costs a dispatch)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def operations(call: Callable[[], object]) -> int:
    """How many operations one call of ``call`` dispatches."""
    with _OpCounter() as counter:
        call()
    return counter.count


def median_seconds(calls: dict[str, Callable[[], object]], repeats: int, number: int) -> dict[str, float]:
    """Median seconds per call of each, timed interleaved (:func:`videotome.measure.time_rounds`) in blocks of
    ``number`` calls, since one call of the cheapest is too short to time alone."""

    def block(call: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(number):
                call()
        return run

    rounds = time_rounds([block(call) for call in calls.values()], repeats=repeats)
    return {name: statistics.median(times) / number for name, times in zip(calls, rounds)}


def measure(batch: int, tokens: int, channels: int, metric_channels: int, r: int, protect_first: bool,
            repeats: int) -> dict[str, float]:
    """Time one shape's merge step (sizes carried from an earlier merge) and its parts; count its operations."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, tokens, channels, generator=generator)
    metric = torch.randn(batch, tokens, metric_channels, generator=generator)
    size = torch.rand(batch, tokens, 1, generator=generator) + 1
    reduction = merge.bipartite_soft_matching(metric, r, protect_first=protect_first)
    tiny = torch.ones(1)

    def step() -> object:
        return merge.merge_wavg(merge.bipartite_soft_matching(metric, r, protect_first=protect_first), x, size)

    calls = {
        "step": step,
        "matching": lambda: merge.bipartite_soft_matching(metric, r, protect_first=protect_first),
        "merging": lambda: merge.merge_wavg(reduction, x, size),
        "floor": lambda: tiny + tiny,
    }
    number = max(1, 20_000 // (batch * tokens // 16 + 1))
    seconds = median_seconds(calls, repeats, number)
    return {**seconds, "operations": operations(step)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median)")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each result here as it is measured")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    body = []
    with torch.inference_mode():
        for name, batch, tokens, channels, metric_channels, r, protect in SHAPES:
            result = measure(batch, tokens, channels, metric_channels, r, protect, args.repeats)
            line = {"shape": name, "batch": batch, "tokens": tokens, "channels": channels, "r": r,
                    "threads": torch.get_num_threads(), "torch": torch.__version__, **result}
            if args.jsonl is not None:
                with args.jsonl.open("a") as out:
                    out.write(json.dumps(line) + "\n")
            body.append([name, f"{batch} x {tokens} x {channels}, {r}", f"{1e6 * result['step']:.0f}",
                         f"{1e6 * result['matching']:.0f}", f"{1e6 * result['merging']:.0f}",
                         str(result["operations"]), f"{1e6 * result['operations'] * result['floor']:.0f}"])
    print(to_markdown(HEADER, body))


if __name__ == "__main__":
    main()
