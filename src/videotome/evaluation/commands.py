"""The ``videotome eval``, ``sweep``, ``report`` and ``confusion`` commands.

Their flags are made from :class:`~videotome.evaluation.harness.EvalConfig` and
:class:`~videotome.plan.MergeSettings` (:mod:`videotome.options`); a sweep takes every merge setting as a list
(one axis of its grid), on the command line or in a TOML file, whose keys are the same field names.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import tomllib
from pathlib import Path
from typing import Any

from ..distributed import in_process_group, is_main_process
from ..options import add_options, from_args
from ..plan import MergeSettings
from .confusion import ConfusionConfig, compare_runs
from .harness import EvalConfig, evaluate, model_directory, read_samples
from .report import GROUPINGS, write_report

#: the keys of a sweep that are not eval options
SWEEP_KEYS = ("models", "out", "datasets")
#: the eval options a sweep takes from its grid (``models``) or its merge settings, not as single values
GRID_FIELDS = ("model", "merge")
#: the eval options a sweep has no use for: a plan file fixes every merge setting, which a sweep varies
EVAL_ONLY = ("plan",)
MERGE_FIELDS = tuple(item.name for item in dataclasses.fields(MergeSettings))
EVAL_FIELDS = tuple(
    item.name for item in dataclasses.fields(EvalConfig) if item.name not in (*GRID_FIELDS, *EVAL_ONLY)
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register eval, sweep, report and confusion."""
    evaluate_parser = subparsers.add_parser(
        "eval", help="accuracy and speed of a (token-merged) model on a dataset", description=cmd_eval.__doc__
    )
    add_options(evaluate_parser, EvalConfig)
    evaluate_parser.add_argument("--out", required=True, help="results file (JSONL)")
    evaluate_parser.add_argument("--resume", action="store_true", help="continue the run already in --out")
    evaluate_parser.set_defaults(func=cmd_eval)

    sweep_parser = subparsers.add_parser(
        "sweep", help="a grid of models x merge settings (x datasets)", description=cmd_sweep.__doc__
    )
    sweep_parser.add_argument("--config", help="TOML file with the grid and any eval option (flags override it)")
    sweep_parser.add_argument("--models", nargs="+", help="checkpoint directories")
    add_options(sweep_parser.add_argument_group("grid: every merge setting takes several values"), MergeSettings,
                many=True)
    add_options(sweep_parser, EvalConfig, exclude=(*GRID_FIELDS, *EVAL_ONLY), required=False)
    sweep_parser.add_argument("--out", help="results file (JSONL) of every run")
    sweep_parser.set_defaults(func=cmd_sweep)

    report_parser = subparsers.add_parser("report", help="paper-style table and plots", description=cmd_report.__doc__)
    report_parser.add_argument("results", nargs="+", help="results files (JSONL) written by eval, sweep or demo")
    report_parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    report_parser.add_argument(
        "--by", choices=GROUPINGS, default="checkpoint",
        help="one row per checkpoint directory, or per model family (the paper's table: all datasets on one row)",
    )
    report_parser.set_defaults(func=cmd_report)

    confusion_parser = subparsers.add_parser(
        "confusion", help="how merging changes the confusion matrix", description=cmd_confusion.__doc__
    )
    confusion_parser.add_argument("unmerged", metavar="UNMERGED", help="results file (JSONL) of the unmerged run")
    confusion_parser.add_argument("merged", metavar="MERGED", help="results file (JSONL) of the merged run")
    add_options(confusion_parser, ConfusionConfig)
    confusion_parser.set_defaults(func=cmd_confusion)


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable metrics and speed of one run."""
    settings, metrics, speed = summary["settings"], summary["metrics"], summary["throughput"]
    merge = MergeSettings.from_dict(settings["merge"])
    reduction = f"r={merge.r} {merge.strategy}/{merge.schedule}" if merge.reduces else "no reduction"
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


@in_process_group
def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate one model on one dataset: top-1/top-5 (EPIC-KITCHENS: verb, noun, action) and clips/s."""
    summary = evaluate(from_args(EvalConfig, args), resume=args.resume, out=args.out)
    if is_main_process():
        print(format_summary(summary))
    return 0


def _toml_keys(table: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept ``batch-size`` or ``batch_size``; refuse keys that are no option (typos would pass silently)."""
    table = {key.replace("-", "_"): value for key, value in table.items()}
    known = set(SWEEP_KEYS) | set(MERGE_FIELDS) | set(EVAL_FIELDS)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {unknown}; expected {list(SWEEP_KEYS)}, merge settings {list(MERGE_FIELDS)} "
            f"or eval options {list(EVAL_FIELDS)}"
        )
    return table


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def sweep_runs(args: argparse.Namespace) -> tuple[list[EvalConfig], str]:
    """Every run of a sweep (TOML file, overridden by flags), each checked before any runs, and the results file.

    The grid is models x every merge setting given as a list x datasets; r = 0 runs once per model and dataset
    (the baseline), and ``threshold`` applies only to the hybrid strategy's runs.
    """
    values: dict[str, Any] = {}
    if args.config:
        with open(args.config, "rb") as handle:
            values = _toml_keys(tomllib.load(handle), args.config)
        values["datasets"] = [_toml_keys(entry, f"{args.config} [[datasets]]") for entry in values.get("datasets", [])]
    flags = {key: value for key, value in vars(args).items() if key not in ("func", "command", "config", "threads")}
    values.update({key: value for key, value in flags.items() if value is not None})
    if not values.get("models"):
        raise ValueError("sweep needs models: --models DIR... or models = [...] in --config")
    if not values.get("out"):
        raise ValueError("sweep needs a results file: --out FILE or out = '...' in --config")
    axes = {name: _as_list(values[name]) for name in MERGE_FIELDS if name in values}
    single = {name: values[name] for name in EVAL_FIELDS if name in values}
    runs: dict[str, EvalConfig] = {}
    for model, dataset, point in itertools.product(
        _as_list(values["models"]), values.get("datasets") or [{}], itertools.product(*axes.values())
    ):
        merge = dict(zip(axes, point))
        if merge.get("strategy", "merge") != "hybrid":
            merge.pop("threshold", None)
        options = {**single, **dataset}
        missing = {"dataset", "root", "annotations"} - set(options)
        if missing:
            raise ValueError(f"sweep needs {sorted(missing)} (flags, top-level keys or [[datasets]] in --config)")
        config = EvalConfig(model=model, merge=MergeSettings(**merge).canonical(), **options)
        runs.setdefault(repr(config), config)
    for config in runs.values():  # every run's paths, then its clips, are checked before the first run starts
        for name in ("model", "annotations", "root"):
            if not Path(getattr(config, name)).exists():
                raise ValueError(f"sweep: {name} {getattr(config, name)!r} does not exist (nothing was run)")
    read: set[tuple[Any, ...]] = set()
    for config in runs.values():
        clips = (config.model, config.dataset, config.annotations, config.root, config.classes, config.limit)
        if clips not in read:
            read_samples(config, model_directory(config.model))
            read.add(clips)
    return list(runs.values()), values["out"]


@in_process_group
def cmd_sweep(args: argparse.Namespace) -> int:
    """Run every model x merge setting (x dataset) into one results file, skipping finished runs."""
    runs, out = sweep_runs(args)
    for index, config in enumerate(runs, start=1):
        merge = config.merge
        if is_main_process():
            print(f"[{index}/{len(runs)}] {Path(config.model).name} r={merge.r} "
                  f"{merge.strategy}/{merge.schedule} on {config.dataset}", file=sys.stderr)
        summary = evaluate(config, new_runs=True, out=out)
        if is_main_process():
            print(format_summary(summary))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write the paper-style table (table.md, table.csv) and accuracy plots from results files."""
    written = write_report(args.results, args.out, args.by)
    print(written["markdown"], end="")
    print(f"wrote {written['table_md']}, {written['table_csv']} and {len(written['plots'])} plots in {args.out}")
    return 0


def cmd_confusion(args: argparse.Namespace) -> int:
    """The merged run's confusion matrix minus the unmerged run's over the most frequent true classes
    (confusion_diff.png, confusion_diff.csv), and the confusions that grew most."""
    written = compare_runs(args.unmerged, args.merged, from_args(ConfusionConfig, args))
    result = written["difference"]
    print(f"{result.head}: merged - unmerged over the {len(result.rows)} most frequent classes ({result.clips} clips"
          + (f"; {result.left_out} left out: failed in a run, or of other classes" if result.left_out else "") + ")")
    print("\n".join(result.largest_increases()) or "no confusion grew")
    print(f"wrote {written['png']} and {written['csv']}")
    return 0
