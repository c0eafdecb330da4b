"""Speed of merged against unmerged models at the paper's operating points (Table 1, constant schedule).

    python benchmarks/paper_points.py [--repeats 3] [--models videomae-base vivit-base ...] [--jsonl OUT]

Each model is timed unmerged and merged in the same process, interleaved (see ``videotome bench``); the speedup is
judged against the FLOP ratio, since a merged model can at best be as much faster as it does less work. Prints a
Markdown table for BENCHMARKS.md; ``--jsonl`` appends every result, so a long run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict

import torch

from videotome.bench import BenchConfig, run_bench
from videotome.plan import MergeSettings

#: model, r per layer (per frame for divided models), the paper's GPU speedup
PAPER_POINTS = {
    "videomae-base": (150, 2.55),
    "vivit-base": (300, 2.46),
    "timesformer-base": (18, 2.04),
    "motionformer-base": (18, 2.19),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PAPER_POINTS), choices=list(PAPER_POINTS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--jsonl", help="append each result to this file as one JSON line")
    args = parser.parse_args()

    device = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.processor() or 'cpu'}"
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}")
    print("| model | r | FLOP ratio | speedup | speedup / FLOP ratio | merge step share | paper speedup (GPU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        r, paper = PAPER_POINTS[name]
        config = BenchConfig(
            name, MergeSettings(r), batch_size=args.batch_size, repeats=args.repeats, device=args.device
        )
        result = run_bench(config)
        if args.jsonl:
            with open(args.jsonl, "a") as handle:
                handle.write(json.dumps(asdict(result)) + "\n")
        print(
            f"| {name} | {r} | {result.flops_ratio:.2f} | {result.speedup:.2f} | "
            f"{result.speedup / result.flops_ratio:.2f} | {result.merge_time_fraction:.1%} | {paper:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
