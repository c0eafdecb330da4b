"""How merging moves predictions between classes: the merged run's confusion matrix minus the unmerged run's.

Both matrices count the top-1 predictions of the clip lines over the same clips. Rows are the ``top`` most frequent
true classes of those clips (most clips first, ties by class index); columns are the same classes plus ``other``
(a prediction outside them), so each row of either matrix sums to its class's clip count and each row of the
difference to zero. A clip that failed in either run is left out of both.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VideotomeError
from ..options import option, positive_int
from .report import ordered_heads, pyplot, to_csv
from .results import Run, read_runs

OTHER = "other"
#: how many of the largest increases the command prints
INCREASES = 10
#: a few ids named when the clip sets differ
EXAMPLES = 3


class ConfusionError(VideotomeError, ValueError):
    """Two runs whose confusion matrices cannot be compared."""


@dataclass
class ConfusionConfig:
    """The options of ``videotome confusion`` (the two results files are its positional arguments)."""

    head: str | None = option(None, "head to compare (default: verb if the runs have one, else their first head)")
    top: int = option(10, "rows: the most frequent true classes; columns: those and 'other'", parse=positive_int)
    out: str = option("confusion_out", "output folder")
    unmerged_run: str | None = option(None, "run id in UNMERGED, when it holds several runs", metavar="ID")
    merged_run: str | None = option(None, "run id in MERGED, when it holds several runs", metavar="ID")


@dataclass
class ConfusionDifference:
    """The two confusion matrices of one head over the top classes (rows) and those classes plus ``other``."""

    head: str
    rows: list[str]
    columns: list[str]
    unmerged: list[list[int]]
    merged: list[list[int]]
    clips: int
    """the clips counted (in each matrix)"""
    left_out: int
    """the clips not counted: failed in either run, or of a class outside the rows"""

    @property
    def difference(self) -> list[list[int]]:
        """Merged minus unmerged, cell by cell."""
        return [[m - u for m, u in zip(merged, unmerged)] for merged, unmerged in zip(self.merged, self.unmerged)]

    def largest_increases(self, count: int = INCREASES) -> list[str]:
        """The off-diagonal cells that grew most, as ``true -> predicted: +N`` lines (largest first)."""
        cells = [
            (value, row, column)
            for row, values in enumerate(self.difference)
            for column, value in enumerate(values)
            if value > 0 and row != column
        ]
        cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
        return [f"{self.rows[row]} -> {self.columns[column]}: +{value}" for value, row, column in cells[:count]]


def select_run(path: str | Path, run: str | None, flag: str) -> Run:
    """The run ``run`` of a results file, or its only run; refused naming the ids when it holds several."""
    if not Path(path).is_file():
        raise ConfusionError(f"results file not found: {path}")
    runs = read_runs(path)
    if not runs:
        raise ConfusionError(f"{path} holds no runs")
    described = ", ".join(f"{r.id} ({Path(r.settings['model']).name} r={r.settings['merge']['r']})" for r in runs)
    if run is not None:
        found = [r for r in runs if r.id == run]
        if not found:
            raise ConfusionError(f"{path} has no run {run}; its runs are {described}")
        return found[0]
    if len(runs) > 1:
        raise ConfusionError(f"{path} holds {len(runs)} runs ({described}): choose one with {flag} ID")
    return runs[0]


def _heads(run: Run) -> set[str]:
    return {head for record in run.records.values() for head in record.get("labels") or {}}


def _check_comparable(unmerged: Run, merged: Run, names: tuple[str, str]) -> None:
    """Refuse runs on different datasets or clips."""
    datasets = unmerged.settings["dataset"], merged.settings["dataset"]
    if datasets[0] != datasets[1]:
        raise ConfusionError(f"the runs are on different datasets: {datasets[0]} ({names[0]}), {datasets[1]} "
                             f"({names[1]})")
    ids = set(unmerged.records), set(merged.records)
    if ids[0] != ids[1]:
        only = [sorted(ids[0] - ids[1]), sorted(ids[1] - ids[0])]
        parts = [
            f"{len(extra)} only in {name}: " + ", ".join(extra[:EXAMPLES]) + (", ..." if len(extra) > EXAMPLES else "")
            for name, extra in zip(names, only)
            if extra
        ]
        raise ConfusionError(
            f"the runs cover different clips ({len(ids[0])} in {names[0]}, {len(ids[1])} in {names[1]}; "
            + "; ".join(parts) + ")"
        )


def confusion_difference(
    unmerged: Run,
    merged: Run,
    *,
    head: str | None = None,
    top: int = 10,
    names: tuple[str, str] = ("UNMERGED", "MERGED"),
) -> ConfusionDifference:
    """The confusion matrices of ``head`` (default: the runs' main head) of two runs over the same clips.

    ``names`` name the runs in refusals (their files, on the command line).
    """
    _check_comparable(unmerged, merged, names)
    heads = _heads(unmerged), _heads(merged)
    common = heads[0] & heads[1]
    if head is None:
        if not common:
            raise ConfusionError(f"the runs share no head ({names[0]}: {sorted(heads[0])}, {names[1]}: "
                                 f"{sorted(heads[1])})")
        head = ordered_heads(common)[0]
    if head not in common:
        raise ConfusionError(
            f"head {head!r} is not a head of both runs ({names[0]}: {', '.join(sorted(heads[0])) or 'none'}; "
            f"{names[1]}: {', '.join(sorted(heads[1])) or 'none'})"
        )
    scored = [
        clip for clip in sorted(unmerged.records)
        if all(run.records[clip].get("error") is None and head in run.records[clip]["labels"]
               for run in (unmerged, merged))
    ]
    truth = {clip: unmerged.records[clip]["labels"][head] for clip in scored}
    disagree = [clip for clip in scored if merged.records[clip]["labels"][head] != truth[clip]]
    if disagree:
        raise ConfusionError(f"the runs give {len(disagree)} clips other {head} labels (e.g. {disagree[0]}): "
                             "they were evaluated on other annotations")
    frequency = Counter(truth.values())
    classes = sorted(frequency, key=lambda label: (-frequency[label], label))[:top]
    position = {label: index for index, label in enumerate(classes)}
    matrices = [[[0] * (len(classes) + 1) for _ in classes] for _ in (unmerged, merged)]
    for clip in scored:
        if truth[clip] not in position:
            continue
        for matrix, run in zip(matrices, (unmerged, merged)):
            predicted = run.records[clip]["top5"][head][0][0]
            matrix[position[truth[clip]]][position.get(predicted, len(classes))] += 1
    class_names = unmerged.header.get("class_names", {}).get(head) or merged.header.get("class_names", {}).get(head)
    rows = [class_names[label] if class_names and label < len(class_names) else str(label) for label in classes]
    counted = sum(frequency[label] for label in classes)
    return ConfusionDifference(head, rows, rows + [OTHER], *matrices, clips=counted,
                               left_out=len(unmerged.records) - counted)


def write_confusion(result: ConfusionDifference, out: str | Path) -> dict[str, Path]:
    """Write ``confusion_diff.csv`` (the difference with class names) and ``confusion_diff.png`` (a heatmap, zero
    white) into ``out``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    difference = result.difference
    table = out / "confusion_diff.csv"
    table.write_text(to_csv(["true \\ predicted", *result.columns],
                            [[name, *map(str, values)] for name, values in zip(result.rows, difference)]))
    plt = pyplot()
    limit = max([1] + [abs(value) for values in difference for value in values])
    size = 2.5 + 0.45 * len(result.columns)
    figure, axis = plt.subplots(figsize=(size + 1.2, size))
    image = axis.imshow(difference, cmap="RdBu_r", vmin=-limit, vmax=limit)
    axis.set_xticks(range(len(result.columns)), result.columns, rotation=90)
    axis.set_yticks(range(len(result.rows)), result.rows)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true class")
    axis.set_title(f"{result.head}: merged - unmerged ({result.clips} clips)")
    if len(result.columns) <= 21:
        for row, values in enumerate(difference):
            for column, value in enumerate(values):
                if value:
                    axis.text(column, row, f"{value:+d}", ha="center", va="center", fontsize="small")
    figure.colorbar(image, ax=axis, label="clips (merged - unmerged)")
    figure.tight_layout()
    picture = out / "confusion_diff.png"
    figure.savefig(picture, dpi=100)
    plt.close(figure)
    return {"csv": table, "png": picture}


def compare_runs(unmerged: str | Path, merged: str | Path, config: ConfusionConfig) -> dict[str, Any]:
    """``videotome confusion``: select the runs, compute the difference, write its files; return the difference
    and the paths written."""
    runs = (select_run(unmerged, config.unmerged_run, "--unmerged-run"),
            select_run(merged, config.merged_run, "--merged-run"))
    result = confusion_difference(*runs, head=config.head, top=config.top, names=(str(unmerged), str(merged)))
    return {"difference": result, **write_confusion(result, config.out)}
