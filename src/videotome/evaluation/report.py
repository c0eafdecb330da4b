"""Paper-style tables (Markdown and CSV) and plots (PNG) from one or more results files.

One row per model and reduction setting, one group of accuracy columns per dataset, model-only clips/s and frames/s,
and the speedup against the same model's r = 0 row. Accuracies are recomputed from the clip lines, so a table is
always consistent with the predictions behind it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results import compute_metrics, read_runs

METRICS = {
    "epic100": ("verb_top1", "noun_top1", "action_top1"),
    "default": ("class_top1", "class_top5"),
}
PRIMARY = {"epic100": "action_top1", "default": "class_top1"}
METRIC_TITLES = {
    "class_top1": "top-1",
    "class_top5": "top-5",
    "verb_top1": "verb",
    "noun_top1": "noun",
    "action_top1": "action",
}


@dataclass
class Row:
    """One line of the table: a model under one reduction setting, over every dataset it was run on."""

    model: str
    r: int | float
    strategy: str
    schedule: str
    extra: str
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    clips_per_s: list[float] = field(default_factory=list)
    frames_per_s: list[float] = field(default_factory=list)
    speedup: float | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        return (self.model, self.r, self.strategy, self.schedule, self.extra)

    @property
    def fps(self) -> float | None:
        return sum(self.clips_per_s) / len(self.clips_per_s) if self.clips_per_s else None


def dataset_label(settings: dict[str, Any]) -> str:
    """Column group name: the dataset, or for plain lists the annotation file's name."""
    if settings["dataset"] == "csv":
        return f"csv:{Path(settings['annotations']).stem}"
    return settings["dataset"]


def _metric_names(dataset: str) -> tuple[str, ...]:
    return METRICS.get(dataset, METRICS["default"])


def _extra(settings: dict[str, Any]) -> str:
    """Reduction options beyond strategy and schedule, shown only when set."""
    parts = [f"{k}={settings[k]}" for k in ("threshold", "prop_attn") if settings.get(k) is not None]
    if settings.get("divided") not in (None, "per_frame"):
        parts.append(f"divided={settings['divided']}")
    return " ".join(parts)


GROUPINGS = ("checkpoint", "family")


def collect_rows(paths: Iterable[str | Path], by: str = "checkpoint") -> list[Row]:
    """Read every run of the files into table rows (a later run with the same key and dataset wins).

    ``by="checkpoint"`` gives each checkpoint directory its own row; ``by="family"`` puts checkpoints of one model
    type (e.g. a Kinetics and a Something-Something VideoMAE) on one row, as in the paper's table.
    """
    if by not in GROUPINGS:
        raise ValueError(f"rows are grouped by one of {GROUPINGS}, got {by!r}")
    rows: dict[tuple[Any, ...], Row] = {}
    for path in paths:
        for run in read_runs(path):
            settings = run.settings
            row = Row(
                model=settings["model_type"] if by == "family" else Path(settings["model"]).name,
                r=settings["r"],
                strategy=settings["strategy"],
                schedule=settings["schedule"],
                extra=_extra(settings),
            )
            row = rows.setdefault(row.key, row)
            row.accuracy[dataset_label(settings)] = compute_metrics(run.records.values())
            timed = [s["throughput"] for s in run.summaries if s["throughput"]["clips_timed"] > 0]
            if timed:
                row.clips_per_s.append(timed[-1]["model_clips_per_s"])
                row.frames_per_s.append(timed[-1]["model_frames_per_s"])
    ordered = sorted(
        rows.values(), key=lambda row: (row.model, row.r != 0, row.strategy, row.schedule, row.extra, row.r)
    )
    for row in ordered:
        baseline = rows.get((row.model, 0, "none", "none", ""))
        if baseline is not None and baseline.fps and row.fps:
            row.speedup = row.fps / baseline.fps
    return ordered


def _datasets(rows: Sequence[Row]) -> list[str]:
    return sorted({name for row in rows for name in row.accuracy})


def table(rows: Sequence[Row]) -> tuple[list[str], list[list[str]]]:
    """The table as a header and string cells (accuracies in percent)."""
    datasets = _datasets(rows)
    header = ["model", "r", "strategy", "schedule", "options"]
    header += [f"{d} {METRIC_TITLES[m]}" for d in datasets for m in _metric_names(d.split(":")[0])]
    header += ["clips/s", "frames/s", "speedup"]
    body = []
    for row in rows:
        cells = [row.model, str(row.r), row.strategy, row.schedule, row.extra]
        for dataset in datasets:
            metrics = row.accuracy.get(dataset, {})
            cells += [_percent(metrics.get(m)) for m in _metric_names(dataset.split(":")[0])]
        frames = sum(row.frames_per_s) / len(row.frames_per_s) if row.frames_per_s else None
        cells += [_number(row.fps), _number(frames), "" if row.speedup is None else f"{row.speedup:.2f}x"]
        body.append(cells)
    return header, body


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def to_markdown(header: list[str], body: list[list[str]]) -> str:
    """Render a GitHub Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], body: list[list[str]]) -> str:
    """Render CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buffer.getvalue()


def plot(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """Accuracy against r and against speedup per model: one subplot per dataset, one line per strategy/schedule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for model in sorted({row.model for row in rows}):
        mine = [row for row in rows if row.model == model]
        datasets = _datasets(mine)
        baseline = [row for row in mine if row.r == 0]
        lines: dict[str, list[Row]] = {}
        for row in mine:
            if row.r != 0:
                lines.setdefault(" ".join(filter(None, (row.strategy, row.schedule, row.extra))), []).append(row)
        lines = lines or {"no reduction": []}
        for axis_name, x_of in (("r", lambda row: float(row.r)), ("speedup", lambda row: row.speedup)):
            figure, axes = plt.subplots(1, len(datasets), figsize=(4.5 * len(datasets), 3.6), squeeze=False)
            for axis, dataset in zip(axes[0], datasets):
                metric = PRIMARY.get(dataset.split(":")[0], PRIMARY["default"])
                for label, members in sorted(lines.items()):
                    points = [
                        (x_of(row), 100 * row.accuracy[dataset][metric])
                        for row in baseline + sorted(members, key=lambda row: row.r)
                        if x_of(row) is not None and metric in row.accuracy.get(dataset, {})
                    ]
                    if points:
                        axis.plot(*zip(*points), marker="o", label=label)
                axis.set_title(f"{model} / {dataset}")
                axis.set_xlabel("r (tokens per layer)" if axis_name == "r" else "speedup (x)")
                axis.set_ylabel(f"{METRIC_TITLES[metric]} accuracy (%)")
                axis.grid(alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize="small")
            figure.tight_layout()
            path = out_dir / f"{_slug(model)}_accuracy_vs_{axis_name}.png"
            figure.savefig(path, dpi=100)
            plt.close(figure)
            written.append(path)
    return written


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_report(paths: Sequence[str | Path], out_dir: str | Path, by: str = "checkpoint") -> dict[str, Any]:
    """Write ``table.md``, ``table.csv`` and the plots into ``out_dir``; return the paths and the Markdown table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = collect_rows(paths, by)
    header, body = table(rows)
    markdown = to_markdown(header, body)
    (out_dir / "table.md").write_text(markdown)
    (out_dir / "table.csv").write_text(to_csv(header, body))
    return {
        "markdown": markdown,
        "table_md": out_dir / "table.md",
        "table_csv": out_dir / "table.csv",
        "plots": plot(rows, out_dir),
    }
