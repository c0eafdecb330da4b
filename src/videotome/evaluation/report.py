"""Paper-style tables (Markdown and CSV) and plots (PNG) from one or more results files.

One row per model and merge setting, one group of accuracy columns per dataset, model-only clips/s and frames/s,
and the speedup against the same model's unmerged row. Accuracies are recomputed from the clip lines, so a table is
always consistent with the predictions behind it. A dataset's columns follow its heads: top-1 and top-5 for one
unnamed head, each named head's top-1 and the action (every head right) for verb and noun heads (EPIC-KITCHENS,
the testbed). When several runs of one setting on one dataset are read, the last one read is the row's, for
accuracy and speed alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..plan import MergeSettings
from .results import compute_metrics, read_runs

GROUPINGS = ("checkpoint", "family")


@dataclass
class TableRow:
    """One line of the table: a model under one merge setting, over every dataset it was run on."""

    model: str
    merge: MergeSettings
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)
    speed: dict[str, tuple[float, float]] = field(default_factory=dict)
    speedup: float | None = None

    @property
    def key(self) -> tuple[str, MergeSettings]:
        return (self.model, self.merge)

    @property
    def fps(self) -> float | None:
        """Model-only clips/s, the mean over the datasets that were timed."""
        return sum(clips for clips, _ in self.speed.values()) / len(self.speed) if self.speed else None

    @property
    def frames_per_s(self) -> float | None:
        return sum(frames for _, frames in self.speed.values()) / len(self.speed) if self.speed else None

    @property
    def strategy(self) -> str:
        return self.merge.strategy if self.merge.reduces else "none"

    @property
    def schedule(self) -> str:
        schedule = self.merge.schedule
        if not self.merge.reduces:
            return "none"
        return schedule if isinstance(schedule, str) else ",".join(map(str, schedule))

    @property
    def extra(self) -> str:
        """Merge options beyond r, strategy and schedule, shown only when they differ from the defaults."""
        merge, default = self.merge, MergeSettings()
        if not merge.reduces:
            return ""
        parts = [f"threshold={merge.threshold}"] if merge.threshold is not None else []
        parts += [f"prop_attn={merge.prop_attn}"] if merge.prop_attn is not None else []
        parts += [f"divided={merge.divided}"] if merge.divided != default.divided else []
        parts += [f"seed={merge.seed}"] if merge.strategy.startswith("random") and merge.seed != default.seed else []
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: the model, its merge settings, each dataset's metrics (accuracies as fractions),
        clips/s, frames/s and the speedup (None where not timed)."""
        return {"model": self.model, "merge": self.merge.to_dict(), "accuracy": self.accuracy, "clips_per_s": self.fps,
                "frames_per_s": self.frames_per_s, "speedup": self.speedup}


def dataset_label(settings: Mapping[str, Any]) -> str:
    """Column group name: the dataset, or for plain lists the annotation file's name."""
    if settings["dataset"] == "csv":
        return f"csv:{Path(settings['annotations']).stem}"
    return settings["dataset"]


def ordered_heads(heads: Iterable[str]) -> list[str]:
    """Heads in the order tables show them: verb, noun, then the others by name (the first is a run's main head)."""
    order = {"verb": 0, "noun": 1}
    return sorted(heads, key=lambda head: (order.get(head, 2), head))


def metric_names(metrics: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The accuracy columns of a dataset from its runs' metrics: class top-1 and top-5 for one unnamed head, else
    each head's top-1 and the action top-1 when there is one."""
    keys = set().union(*(set(m) for m in metrics))
    heads = sorted({key[: -len("_top1")] for key in keys if key.endswith("_top1")} - {"action"})
    if heads in ([], ["class"]):
        return ("class_top1", "class_top5")
    names = [f"{head}_top1" for head in ordered_heads(heads)]
    return tuple(names + (["action_top1"] if "action_top1" in keys else []))


def metric_title(name: str) -> str:
    """A column's title: top-1 / top-5 for the unnamed head, else the head's name."""
    return {"class_top1": "top-1", "class_top5": "top-5"}.get(name, name.removesuffix("_top1"))


def primary_metric(names: Sequence[str]) -> str:
    """The one accuracy a plot shows: action when there is one, else the first column."""
    return "action_top1" if "action_top1" in names else names[0]


def collect_rows(paths: Iterable[str | Path], by: str = "checkpoint") -> list[TableRow]:
    """Read every run of the files into table rows (the last run read of a setting and dataset wins).

    ``by="checkpoint"`` gives each checkpoint directory its own row; ``by="family"`` puts checkpoints of one model
    type (e.g. a Kinetics and a Something-Something VideoMAE) on one row, as in the paper's table.
    """
    if by not in GROUPINGS:
        raise ValueError(f"rows are grouped by one of {GROUPINGS}, got {by!r}")
    rows: dict[tuple[str, MergeSettings], TableRow] = {}
    for path in paths:
        for run in read_runs(path):
            settings = run.settings
            model = settings["model_type"] if by == "family" else Path(settings["model"]).name
            merge = MergeSettings.from_dict(settings["merge"]).canonical()
            row = rows.setdefault((model, merge), TableRow(model, merge))
            dataset = dataset_label(settings)
            row.accuracy[dataset] = compute_metrics(run.records.values())
            timed = [s["throughput"] for s in run.summaries if s["throughput"]["clips_timed"] > 0]
            row.speed.pop(dataset, None)
            if timed:
                row.speed[dataset] = (timed[-1]["model_clips_per_s"], timed[-1]["model_frames_per_s"])
    ordered = sorted(
        rows.values(), key=lambda row: (row.model, row.merge.reduces, row.strategy, row.schedule, row.extra,
                                        float(row.merge.r))
    )
    for row in ordered:
        baseline = rows.get((row.model, MergeSettings()))
        if baseline is not None and baseline.fps and row.fps:
            row.speedup = row.fps / baseline.fps
    return ordered


def _columns(rows: Sequence[TableRow]) -> dict[str, tuple[str, ...]]:
    """Each dataset's accuracy columns, datasets in name order."""
    datasets = sorted({name for row in rows for name in row.accuracy})
    return {d: metric_names(row.accuracy[d] for row in rows if d in row.accuracy) for d in datasets}


def table(rows: Sequence[TableRow]) -> tuple[list[str], list[list[str]]]:
    """The table as a header and string cells (accuracies in percent)."""
    columns = _columns(rows)
    header = ["model", "r", "strategy", "schedule", "options"]
    header += [f"{d} {metric_title(m)}" for d, names in columns.items() for m in names]
    header += ["clips/s", "frames/s", "speedup"]
    body = []
    for row in rows:
        cells = [row.model, str(row.merge.r), row.strategy, row.schedule, row.extra]
        for dataset, names in columns.items():
            metrics = row.accuracy.get(dataset, {})
            cells += [_percent(metrics.get(m)) for m in names]
        cells += [_rate(row.fps), _rate(row.frames_per_s), "" if row.speedup is None else f"{row.speedup:.2f}x"]
        body.append(cells)
    return header, body


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def _rate(value: float | None) -> str:
    """A per-second rate with one decimal ("" when unknown)."""
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


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(rows: Sequence[TableRow], out_dir: Path) -> list[Path]:
    """Accuracy against r and against speedup per model: one subplot per dataset, one line per strategy/schedule
    (and options), the unmerged row the first point of every line."""
    plt = pyplot()
    written = []
    for model in sorted({row.model for row in rows}):
        mine = [row for row in rows if row.model == model]
        columns = _columns(mine)
        baseline = [row for row in mine if not row.merge.reduces]
        lines: dict[str, list[TableRow]] = {}
        for row in mine:
            if row.merge.reduces:
                lines.setdefault(" ".join(filter(None, (row.strategy, row.schedule, row.extra))), []).append(row)
        lines = lines or {"no reduction": []}
        for axis_name, x_of in (("r", lambda row: float(row.merge.r)), ("speedup", lambda row: row.speedup)):
            figure, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.6), squeeze=False)
            for axis, (dataset, names) in zip(axes[0], columns.items()):
                metric = primary_metric(names)
                for label, members in sorted(lines.items()):
                    points = [
                        (x_of(row), 100 * row.accuracy[dataset][metric])
                        for row in baseline + sorted(members, key=lambda row: float(row.merge.r))
                        if x_of(row) is not None and metric in row.accuracy.get(dataset, {})
                    ]
                    if points:
                        axis.plot(*zip(*points), marker="o", label=label)
                axis.set_title(f"{model} / {dataset}")
                axis.set_xlabel("r (tokens per layer)" if axis_name == "r" else "speedup (x)")
                axis.set_ylabel(f"{metric_title(metric)} accuracy (%)")
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
    """Write ``table.md``, ``table.csv`` and the plots into ``out_dir``; return the paths, the Markdown table and the
    rows."""
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
        "rows": rows,
    }
