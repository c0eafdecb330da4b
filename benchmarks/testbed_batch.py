"""How the testbed models' speedup at the paper's operating point depends on the batch size.

    OMP_NUM_THREADS=2 python benchmarks/testbed_batch.py --batches 16 32 64 128 256 --jsonl batch.jsonl

For each packaged testbed model and batch size, :func:`videotome.bench.run_bench` times the unmerged and the merged
model (merge, constant schedule, the demo's operating point) interleaved in this process, and counts both models'
FLOPs. Prints a Markdown table with one row per model and batch, then each model's best-batch speedup: the highest
merged throughput over the highest unmerged throughput, whatever batch each reaches it at. On a CPU the two can
differ a lot: the unmerged model's activations outgrow the caches at a smaller batch than the merged model's do,
which inflates the speedup at large batches. Each result is appended to ``--jsonl`` as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from videotome.bench import BenchConfig, BenchResult, run_bench
from videotome.evaluation.report import to_markdown
from videotome.testbed.models import ARCHITECTURES, checkpoint_dir, load_checkpoint
from videotome.testbed.settings import operating_point


HEADER = ["model", "batch", "clips/s unmerged -> merged", "speedup", "FLOP ratio", "speedup / FLOP ratio", "merge step"]


def row(arch: str, result: BenchResult) -> list[str]:
    """One table row: the batch, both throughputs, the speedup against the FLOP ratio, the merge step's share."""
    return [
        arch,
        str(result.batch_size),
        f"{result.baseline_clips_per_s:.0f} -> {result.merged_clips_per_s:.0f}",
        f"{result.speedup:.2f}x",
        f"{result.flops_ratio:.2f}",
        f"{result.speedup / result.flops_ratio:.2f}",
        f"{100 * result.merge_time_fraction:.0f}%",
    ]


def best_batch_speedup(results: list[BenchResult]) -> str:
    """The highest merged throughput over the highest unmerged one, and the batches they were reached at."""
    base = max(results, key=lambda result: result.baseline_clips_per_s)
    merged = max(results, key=lambda result: result.merged_clips_per_s)
    ratio = merged.merged_clips_per_s / base.baseline_clips_per_s
    return (
        f"{ratio:.2f}x (unmerged peaks at batch {base.batch_size}: {base.baseline_clips_per_s:.0f} clips/s; "
        f"merged at batch {merged.batch_size}: {merged.merged_clips_per_s:.0f} clips/s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=ARCHITECTURES, default=list(ARCHITECTURES))
    parser.add_argument("--batches", nargs="+", type=int, default=[16, 32, 64, 128, 256])
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per batch (median)")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each result here as it is measured")
    args = parser.parse_args()
    bad = [batch for batch in args.batches if batch < 1]
    if bad:
        parser.error(f"--batches must be positive, got {bad}")

    body, best = [], {}
    progress = tqdm(total=len(args.models) * len(args.batches), desc="testbed batches", unit="run")
    for arch in args.models:
        settings = operating_point(load_checkpoint(arch), arch)
        results = []
        for batch in args.batches:
            config = BenchConfig(str(checkpoint_dir(arch)), settings, batch_size=batch, repeats=args.repeats)
            result = run_bench(config, progress=False)
            results.append(result)
            body.append(row(arch, result))
            if args.jsonl is not None:
                with args.jsonl.open("a") as out:
                    out.write(json.dumps({"arch": arch, **asdict(result)}) + "\n")
            progress.update()
        best[arch] = best_batch_speedup(results)
    progress.close()
    print(to_markdown(HEADER, body))
    for arch, line in best.items():
        print(f"- {arch}: best-batch speedup {line}")


if __name__ == "__main__":
    main()
