"""The ``videotome eval``, ``videotome sweep`` and ``videotome report`` commands."""

from __future__ import annotations

import argparse
import itertools
import sys
import tomllib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from videotome import SCHEDULES, STRATEGIES

from .datasets import DATASETS, AnnotationError
from ..plan import parse_r
from .harness import EvalConfig, EvaluationError, evaluate, parse_heads
from .report import GROUPINGS, write_report
from .results import ResultsError
from .video import DECODERS, SAMPLING_MODES

DIVIDED = ("per_frame", "aligned")
SWEEP_KEYS = ("models", "r", "strategies", "schedules", "out", "datasets")
EXPECTED_ERRORS = (AnnotationError, EvaluationError, ResultsError, ValueError, OSError)


def _heads(text: str) -> str:
    parse_heads(text)
    return text


def _add_data_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    """Flags shared by eval and sweep: the data, frame sampling and how to run."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=DATASETS, required=required, help="annotation format")
    data.add_argument("--root", required=required, help="folder the videos are in")
    data.add_argument("--annotations", required=required, help="annotation file of the split to evaluate")
    data.add_argument("--classes", help="class list (k400: names, one a line or JSON; ssv2: labels.json)")
    data.add_argument("--heads", type=_heads, help="split logits into heads, e.g. verb:97,noun:300 (EPIC-KITCHENS)")
    data.add_argument("--limit", type=int, help="evaluate only the first N clips")
    data.add_argument("--frames", type=int, help="frames per clip (default: the model's)")
    data.add_argument("--sampling", choices=SAMPLING_MODES, help="frame sampling (default: the model family's)")
    data.add_argument("--stride", type=int, help="frame stride for dense sampling (default: the model family's)")
    data.add_argument("--decoder", choices=DECODERS, help="video decoder (decord only if installed; default pyav)")
    run = parser.add_argument_group("running")
    run.add_argument("--batch-size", type=int, help="clips per forward pass (default 8)")
    run.add_argument("--workers", type=int, help="decoding worker processes (default 2)")
    run.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    run.add_argument("--seed", type=int, help="seed of the random strategies (default 0)")
    run.add_argument("--strict", action="store_true", default=None, help="stop at the first bad video")
    run.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
    run.add_argument("--out", required=required, help="results file (JSONL)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register eval, sweep and report."""
    evaluate_parser = subparsers.add_parser(
        "eval", help="accuracy and speed of a (token-merged) model on a dataset", description=cmd_eval.__doc__
    )
    evaluate_parser.add_argument("--model", required=True, help="checkpoint directory (or a cached Hub id)")
    reduction = evaluate_parser.add_argument_group("token reduction (videotome.patch)")
    reduction.add_argument("--r", type=parse_r, default=0, help="tokens merged per layer, or a fraction (0: none)")
    reduction.add_argument("--schedule", choices=SCHEDULES, default="constant")
    reduction.add_argument("--strategy", choices=STRATEGIES, default="merge")
    reduction.add_argument("--threshold", type=float, help="similarity threshold (hybrid strategy)")
    reduction.add_argument("--prop-attn", action=argparse.BooleanOptionalAction, help="proportional attention")
    reduction.add_argument("--divided", choices=DIVIDED, default="per_frame", help="divided space-time attention")
    _add_data_arguments(evaluate_parser, required=True)
    evaluate_parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    evaluate_parser.set_defaults(func=cmd_eval)

    sweep_parser = subparsers.add_parser(
        "sweep", help="a grid of models x r x strategies x schedules", description=cmd_sweep.__doc__
    )
    sweep_parser.add_argument("--config", help="TOML file with the grid and any eval option (flags override it)")
    sweep_parser.add_argument("--models", nargs="+", help="checkpoint directories")
    sweep_parser.add_argument("--r", dest="r_values", nargs="+", type=parse_r, help="r values (0 = baseline)")
    sweep_parser.add_argument("--strategies", nargs="+", choices=STRATEGIES)
    sweep_parser.add_argument("--schedules", nargs="+", choices=SCHEDULES)
    _add_data_arguments(sweep_parser, required=False)
    sweep_parser.set_defaults(func=cmd_sweep)

    report_parser = subparsers.add_parser("report", help="paper-style table and plots", description=cmd_report.__doc__)
    report_parser.add_argument("results", nargs="+", help="results files (JSONL) written by eval or sweep")
    report_parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    report_parser.add_argument(
        "--by", choices=GROUPINGS, default="checkpoint",
        help="one row per checkpoint directory, or per model family (the paper's table: all datasets on one row)",
    )
    report_parser.set_defaults(func=cmd_report)


def _config_fields(values: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys that are EvalConfig fields and are set."""
    names = {f.name for f in fields(EvalConfig)}
    return {k: v for k, v in values.items() if k in names and v is not None}


def _report_errors(function: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn expected failures into one clear line on stderr and exit code 2."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return function(args)
        except EXPECTED_ERRORS as error:
            print(f"videotome {args.command}: error: {error}", file=sys.stderr)
            return 2
        finally:
            _finish_distributed()

    wrapper.__doc__ = function.__doc__
    return wrapper


def _finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable metrics and speed of one run."""
    settings, metrics, speed = summary["settings"], summary["metrics"], summary["throughput"]
    reduction = f"r={settings['r']} {settings['strategy']}/{settings['schedule']}" if settings["r"] else "no reduction"
    accuracy = "  ".join(
        f"{name.replace('_top', ' top-').replace('class ', '')} {100 * value:.2f}"
        for name, value in metrics.items()
        if name.endswith(("top1", "top5"))
    )
    return (
        f"{Path(settings['model']).name} on {settings['dataset']} ({reduction})\n"
        f"  accuracy: {accuracy or 'n/a'}\n"
        f"  clips: {metrics['clips']} ({metrics['failed']} failed)\n"
        f"  model: {speed['model_clips_per_s']:.2f} clips/s, {speed['model_frames_per_s']:.1f} frames/s; "
        f"end-to-end: {speed['end_to_end_clips_per_s']:.2f} clips/s"
    )


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


@_report_errors
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate one model on one dataset: top-1/top-5 (EPIC-KITCHENS: verb, noun, action) and clips/s."""
    config = EvalConfig(**_config_fields(vars(args)))
    summary = evaluate(config, resume=args.resume, out=args.out)
    if _is_rank_zero():
        print(format_summary(summary))
    return 0


def _toml_keys(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept ``batch-size`` or ``batch_size``; refuse keys that are no eval option (typos would pass silently)."""
    table = {key.replace("-", "_"): value for key, value in table.items()}
    known = {f.name for f in fields(EvalConfig)} | set(SWEEP_KEYS)
    unknown = sorted(set(table) - known)
    if unknown:
        options = sorted(known - set(SWEEP_KEYS))
        raise ValueError(f"{where}: unknown keys {unknown}; expected {list(SWEEP_KEYS)} or eval options {options}")
    return table


def load_sweep(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    """Expand the grid (TOML file, overridden by flags) into eval settings, one per run, and the results file."""
    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as handle:
            values = _toml_keys(tomllib.load(handle), args.config)
        values["datasets"] = [_toml_keys(entry, f"{args.config} [[datasets]]") for entry in values.get("datasets", [])]
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("func", "command", "config")}
    values.update({"r": flags.pop("r_values")} if "r_values" in flags else {})
    values.update(flags)
    grid = {
        "model": values.get("models"),
        "r": values.get("r", [0]),
        "strategy": values.get("strategies", ["merge"]),
        "schedule": values.get("schedules", ["constant"]),
    }
    if not grid["model"]:
        raise ValueError("sweep needs models: --models DIR... or models = [...] in --config")
    if not values.get("out"):
        raise ValueError("sweep needs a results file: --out FILE or out = '...' in --config")
    grid["r"] = [parse_r(str(r)) for r in grid["r"]]
    datasets = values.get("datasets") or [{}]
    runs, seen = [], set()
    for model, r, strategy, schedule, dataset in itertools.product(*grid.values(), datasets):
        if r == 0:
            strategy, schedule = "merge", "constant"  # the baseline: one run per model and dataset
        run = {**values, **dataset, "model": model, "r": r, "strategy": strategy, "schedule": schedule}
        key = repr(sorted(_config_fields(run).items()))
        if key not in seen:
            seen.add(key)
            runs.append(_config_fields(run))
    missing = {"dataset", "root", "annotations"} - set(runs[0])
    if missing:
        raise ValueError(f"sweep needs {sorted(missing)} (flags, top-level keys or [[datasets]] in --config)")
    return runs, values["out"]


@_report_errors
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run every model x r x strategy x schedule (x dataset) into one results file, skipping finished runs."""
    runs, out = load_sweep(args)
    for index, settings in enumerate(runs, start=1):
        if _is_rank_zero():
            print(f"[{index}/{len(runs)}] {Path(settings['model']).name} r={settings['r']} "
                  f"{settings['strategy']}/{settings['schedule']} on {settings['dataset']}", file=sys.stderr)
        summary = evaluate(EvalConfig(**settings), new_runs=True, out=out)
        if _is_rank_zero():
            print(format_summary(summary))
    return 0


@_report_errors
def cmd_report(args: argparse.Namespace) -> int:
    """Write the paper-style table (table.md, table.csv) and accuracy plots from results files."""
    written = write_report(args.results, args.out, args.by)
    print(written["markdown"], end="")
    print(f"wrote {written['table_md']}, {written['table_csv']} and {len(written['plots'])} plots in {args.out}")
    return 0
