"""How close merging comes to the limit its token counts allow: the merged model against the zero-cost ideal.

    OMP_NUM_THREADS=1 python benchmarks/limit.py --jsonl limit.jsonl [--compile] [--quick]

The zero-cost ideal (:func:`videotome.bench.zero_cost_ideal`) is the same model with the same token count in every
layer as the merged plan, whose removal costs nothing: a slice keeping each sequence's (divided models: each
frame's) first tokens, with no matching and no averaging. A merged model can at best be as fast as its ideal, so
merged / ideal measures what the merge step costs, and the ideal's speedup what the token counts allow.

For each packaged testbed model (at the demo's operating point) and each paper-size model (its Table 1 point, random
weights), at each batch size, the unmerged model, the ideal and the merged model are timed interleaved in this process
(:func:`videotome.measure.time_rounds`); the spread is the interquartile range of the per-round ratio (each round
times the three back to back, so a ratio within a round shares the machine's load). The merge step's share is the
time clocked inside the merge steps of a few more merged forwards (:func:`videotome.measure.seconds_in_steps`).
``--compile`` times the three compiled (``torch.compile``, inductor; ``mode="reduce-overhead"`` on CUDA) as well, each
compiled once before its timing, with the first call's seconds reported as the compile time. Every result is
appended to ``--jsonl`` as soon as it is measured, so a long run keeps what it finished; a Markdown table for
BENCHMARKS.md is printed at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from paper_points import PAPER_POINTS
from torch import nn
from tqdm import tqdm

from videotome import patch
from videotome.bench import bench_model, example_input, zero_cost_ideal
from videotome.evaluation.report import to_markdown
from videotome.measure import resolve_device, seconds_in_steps, synchronize, time_rounds
from videotome.plan import MergeSettings
from videotome.testbed.models import ARCHITECTURES, load_checkpoint
from videotome.testbed.settings import operating_point

TESTBED_BATCHES = (1, 4, 16, 64, 128, 256)
#: paper-size models are timed at small batches by default: batch 16 of VideoMAE-B takes minutes per round on a CPU
PAPER_BATCHES = (1, 4)
QUICK = {"models": list(ARCHITECTURES), "batches": [1, 16], "paper_batches": [], "repeats": 3}
HEADER = ["model", "batch", "mode", "unmerged ms", "ideal speedup", "speedup", "merged / ideal (IQR)", "merge step",
          "compile s (unmerged, ideal, merged)"]


def load(name: str) -> tuple[nn.Module, MergeSettings]:
    """A testbed model with its operating point, or a paper-size model with random weights and its paper point."""
    if name in ARCHITECTURES:
        model = load_checkpoint(name)
        return model, operating_point(model, name)
    return bench_model(name), MergeSettings(PAPER_POINTS[name][0])


def variants(model: nn.Module, settings: MergeSettings) -> dict[str, nn.Module]:
    """The unmerged model, its zero-cost ideal and the merged model, sharing one set of weights."""
    return {"unmerged": model, "ideal": zero_cost_ideal(model, settings), "merged": patch(copy.copy(model), settings)}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """The first quartile, median and third quartile of ``values``."""
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [values[0]] * 3
    return q1, median, q3


def measure(
    modules: dict[str, nn.Module], pixel_values: torch.Tensor, *, repeats: int, warmup: int, device: torch.device,
    compiled: bool,
) -> dict[str, object]:
    """Time the three variants interleaved (compiled first when asked); their medians, ratios and spread."""
    compile_s = {}
    if compiled:
        mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs remove the launch costs
        modules = {name: torch.compile(module, mode=mode) for name, module in modules.items()}
    calls: dict[str, Callable[[], object]] = {}
    for name, module in modules.items():
        def call(module: nn.Module = module) -> object:
            return module(pixel_values=pixel_values)
        if compiled:
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            compile_s[name] = time.perf_counter() - start
        calls[name] = call
    rounds = dict(zip(calls, time_rounds(list(calls.values()), warmup=warmup, repeats=repeats, device=device)))
    per_round = [ideal / merged for ideal, merged in zip(rounds["ideal"], rounds["merged"])]
    q1, median, q3 = quartiles(per_round)
    seconds = {name: statistics.median(values) for name, values in rounds.items()}
    result = {
        "seconds": seconds,
        "speedup": seconds["unmerged"] / seconds["merged"],
        "ideal_speedup": seconds["unmerged"] / seconds["ideal"],
        "merged_over_ideal": median,
        "merged_over_ideal_iqr": [q1, q3],
        "rounds": rounds,
        "compile_s": compile_s or None,
        "merge_share": None,
    }
    if not compiled and device.type == "cpu":
        inside, total = seconds_in_steps(calls["merged"])
        result["merge_share"] = inside / total
    return result


def row(line: dict[str, object]) -> list[str]:
    """One table row of a JSONL result."""
    q1, q3 = line["merged_over_ideal_iqr"]
    share = "" if line["merge_share"] is None else f"{100 * line['merge_share']:.0f}%"
    compile_s = line["compile_s"]
    compiled = "" if compile_s is None else ", ".join(f"{compile_s[name]:.0f}" for name in ("unmerged", "ideal", "merged"))
    return [
        line["model"], str(line["batch_size"]), line["mode"], f"{1e3 * line['seconds']['unmerged']:.1f}",
        f"{line['ideal_speedup']:.2f}x", f"{line['speedup']:.2f}x",
        f"{line['merged_over_ideal']:.2f} ({q1:.2f}-{q3:.2f})", share, compiled,
    ]


def machine(device: torch.device) -> dict[str, object]:
    """What the figures depend on: the processor or GPU, torch, and the threads."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"device": str(device), "hardware": name, "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    every = list(ARCHITECTURES) + list(PAPER_POINTS)
    parser.add_argument("--models", nargs="+", choices=every, default=every)
    parser.add_argument("--batches", nargs="+", type=int, default=list(TESTBED_BATCHES),
                        help="batch sizes of the testbed models")
    parser.add_argument("--paper-batches", nargs="*", type=int, default=list(PAPER_BATCHES),
                        help="batch sizes of the paper-size models (none: skip them)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (median, and the spread over rounds)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--compile", action="store_true", help="also time the three compiled (torch.compile)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--quick", action="store_true",
                        help="testbed models only, batches 1 and 16, 3 rounds (a minute or two)")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each result here as it is measured")
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    bad = [batch for batch in args.batches + args.paper_batches if batch < 1]
    if bad or args.repeats < 1 or args.warmup < 0:
        parser.error(f"batch sizes and --repeats must be positive and --warmup at least 0 (batches {bad})")
    device = resolve_device(args.device)
    host = machine(device)
    print(", ".join(f"{key} {value}" for key, value in host.items()))
    modes = ["eager", "compiled"] if args.compile else ["eager"]
    jobs = [(name, batch) for name in args.models
            for batch in (args.batches if name in ARCHITECTURES else args.paper_batches)]
    body = []
    progress = tqdm(total=len(jobs) * len(modes), desc="limit", unit="run")
    for name, batch in jobs:
        torch.manual_seed(0)
        model, settings = load(name)
        modules = {key: module.to(device) for key, module in variants(model.to(device), settings).items()}
        pixel_values = example_input(model, batch)[0].to(device)
        for mode in modes:
            with torch.inference_mode():
                result = measure(modules, pixel_values, repeats=args.repeats, warmup=args.warmup, device=device,
                                 compiled=mode == "compiled")
            line = {"model": name, "batch_size": batch, "mode": mode, "merge": settings.to_dict(), **host, **result}
            if args.jsonl is not None:
                with args.jsonl.open("a") as out:
                    out.write(json.dumps(line) + "\n")
            body.append(row(line))
            progress.update()
            torch._dynamo.reset()
    progress.close()
    print(to_markdown(HEADER, body))


if __name__ == "__main__":
    main()
