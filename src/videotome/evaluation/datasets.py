"""Annotation formats of the evaluation sets: plain lists, Kinetics-400, Something-Something v2, EPIC-KITCHENS-100.

Every reader returns a list of ``Sample`` and checks the whole file before any video is touched: a malformed line
raises ``AnnotationError`` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import VideotomeError
from .video import VIDEO_EXTENSIONS

DATASETS = ("k400", "ssv2", "epic100", "csv")


class AnnotationError(VideotomeError, ValueError):
    """An annotation file that cannot be read as the expected format."""


@dataclass(frozen=True)
class Sample:
    """One clip to classify: where it is, which part of it, and its label per head (``class``, or verb and noun)."""

    id: str
    path: Path
    labels: dict[str, int] = field(default_factory=dict)
    start: float | None = None
    end: float | None = None
    where: str = ""


def normalize_class_name(name: str) -> str:
    """Compare class names loosely: case, quotes, underscores and repeated spaces do not matter."""
    return " ".join(name.strip().strip("\"'").replace("_", " ").lower().split())


def read_class_list(path: str | Path) -> dict[int, str]:
    """Read a class list as index -> name, the names as written: a checkpoint's ``config.json`` (its
    ``id2label``), JSON ``{name: index}`` or ``[name, ...]``, or a text file with one name per line."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, dict) and "id2label" in data:
            return {int(index): name for index, name in data["id2label"].items()}
        items = data.items() if isinstance(data, dict) else ((name, i) for i, name in enumerate(data))
        return {int(index): name for name, index in items}
    names = [line.strip() for line in text.splitlines() if line.strip()]
    return dict(enumerate(names))


def load_class_names(path: str | Path) -> dict[str, int]:
    """Read a class list (:func:`read_class_list`) as a normalised name -> index map."""
    return {normalize_class_name(name): index for index, name in read_class_list(path).items()}


def class_names_from_id2label(id2label: Mapping[int | str, str]) -> dict[str, int]:
    """Invert a model config's ``id2label`` into a normalised name -> index map."""
    return {normalize_class_name(name): int(index) for index, name in id2label.items()}


#: EPIC-KITCHENS-100's class lists (``id,key,instances,category``), read from beside the annotation file
EPIC_CLASS_FILES = {"verb": "EPIC_100_verb_classes.csv", "noun": "EPIC_100_noun_classes.csv"}


def head_class_names(
    dataset: str,
    annotations: str | Path,
    head_sizes: Mapping[str, int],
    id2label: Mapping[int | str, str] | None = None,
    classes_file: str | Path | None = None,
) -> dict[str, list[str]]:
    """Each head's class names in index order, from what the run is evaluated with: Kinetics' ``--classes``,
    Something-Something's ``labels.json``, EPIC-KITCHENS-100's verb and noun lists beside the annotations, else the
    model's ``id2label`` (split over the heads in order, a ``head: `` prefix dropped; transformers' default
    ``LABEL_N`` names count as none). Heads without names are left out; an index a list lacks is named by its
    number."""
    lists: dict[str, dict[int, str]] = {}
    if dataset == "k400" and classes_file:
        lists["class"] = read_class_list(classes_file)
    elif dataset == "ssv2":
        lists["class"] = read_class_list(classes_file or Path(annotations).with_name("labels.json"))
    elif dataset == "epic100":
        for head, name in EPIC_CLASS_FILES.items():
            if Path(annotations).with_name(name).is_file():
                lists[head] = _read_epic_classes(Path(annotations).with_name(name))
    names = {int(index): name for index, name in (id2label or {}).items()}
    if len(names) == sum(head_sizes.values()) and any(name != f"LABEL_{i}" for i, name in names.items()):
        offset = 0
        for head, size in head_sizes.items():
            own = {i: names.get(offset + i, str(i)).removeprefix(f"{head}: ") for i in range(size)}
            lists.setdefault(head, own)
            offset += size
    return {head: [lists[head].get(i, str(i)) for i in range(size)] for head, size in head_sizes.items() if head in lists}


def _read_epic_classes(path: Path) -> dict[int, str]:
    """An EPIC-KITCHENS-100 class list (``EPIC_100_verb_classes.csv``): index -> key."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"id", "key"} <= set(reader.fieldnames or ()):
            raise _fail(path, 1, f"expected a header with columns id and key, got {reader.fieldnames}")
        try:
            return {int(row["id"]): row["key"] for row in reader}
        except ValueError:
            raise _fail(path, reader.line_num, "expected an integer id") from None


def _fail(path: Path, line: int, message: str) -> AnnotationError:
    return AnnotationError(f"{path}:{line}: {message}")


def _lookup_class(names: Mapping[str, int], name: str, path: Path, line: int) -> int:
    key = normalize_class_name(name)
    if key not in names:
        raise _fail(path, line, f"class {name!r} is not one of the model's {len(names)} classes (see --classes)")
    return names[key]


def read_list(annotations: str | Path, root: str | Path) -> list[Sample]:
    """Read a ``relative/path label`` list (space, comma or tab separated: PySlowFast, VideoMAE, mmaction2).

    An optional header line names the columns, the path first: ``path verb noun`` gives each sample a ``verb`` and a
    ``noun`` label (heads of a multi-head model); without one, the single label is the ``class`` head.
    """
    path, root = Path(annotations), Path(root)
    rows = [(number, line) for number, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]
    heads = ["class"]
    expected = "'<relative/path> <integer label>' (or first a header naming the columns, like 'path verb noun')"
    if rows and not all(re.fullmatch(r"\d+", part) for part in _line_fields(rows[0][1])[1:]):
        number, line = rows.pop(0)
        names = _line_fields(line)
        heads = names[1:]
        if not heads or len(set(heads)) != len(heads) or not all(re.fullmatch(r"[A-Za-z_]\w*", n) for n in names):
            raise _fail(path, number, f"expected a header of distinct column names like 'path verb noun', got {line!r}")
        expected = "'<relative/path> " + " ".join(f"<integer {head}>" for head in heads) + "' (the header's columns)"
    samples = []
    for number, line in rows:
        parts = _line_fields(line)
        if len(parts) != 1 + len(heads) or not all(re.fullmatch(r"\d+", part) for part in parts[1:]):
            raise _fail(path, number, f"expected {expected}, got {line!r}")
        labels = {head: int(value) for head, value in zip(heads, parts[1:])}
        samples.append(Sample(id=parts[0], path=root / parts[0], labels=labels, where=f"line {number}"))
    return samples


def _line_fields(line: str) -> list[str]:
    """The fields of a list line, split at commas, tabs and spaces."""
    return [part for part in re.split(r"[,\t ]+", line.strip()) if part]


def _find_video(root: Path, stem: str, folders: list[str]) -> Path:
    """Locate ``stem`` with any video extension (lower or upper case), at the root or in one of ``folders``; default
    to the root .mp4."""
    for folder in ["", *folders]:
        for extension in (*VIDEO_EXTENSIONS, *(extension.upper() for extension in VIDEO_EXTENSIONS)):
            candidate = root / folder / f"{stem}{extension}"
            if candidate.is_file():
                return candidate
    return root / f"{stem}.mp4"


def read_kinetics(annotations: str | Path, root: str | Path, class_names: Mapping[str, int]) -> list[Sample]:
    """Read Kinetics-400's official CSV (``label,youtube_id,time_start,time_end,split``).

    Files are ``{youtube_id}_{start:06d}_{end:06d}.mp4``, at the root or in per-class folders.
    """
    path, root = Path(annotations), Path(root)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        required = {"label", "youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not required <= set(reader.fieldnames):
            raise _fail(path, 1, f"expected a header with columns {sorted(required)}, got {reader.fieldnames}")
        samples = []
        for row in reader:
            number = reader.line_num
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise _fail(path, number, f"expected integer time_start and time_end, got {row}") from None
            label = _lookup_class(class_names, row["label"] or "", path, number)
            stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
            folders = [row["label"], row["label"].replace(" ", "_")]
            video = _find_video(root, stem, folders)
            samples.append(Sample(id=stem, path=video, labels={"class": label}, where=f"line {number}"))
    return samples


def read_ssv2(annotations: str | Path, root: str | Path, labels_file: str | Path | None = None) -> list[Sample]:
    """Read Something-Something v2's ``validation.json`` with ``labels.json`` (next to it unless given)."""
    path, root = Path(annotations), Path(root)
    labels_path = Path(labels_file) if labels_file else path.with_name("labels.json")
    if not labels_path.is_file():
        raise AnnotationError(f"{path}: needs the class list labels.json, not found at {labels_path} (see --classes)")
    class_names = load_class_names(labels_path)
    try:
        entries = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise _fail(path, error.lineno, f"expected a JSON list of {{id, label, template}}: {error.msg}") from None
    if not isinstance(entries, list):
        raise _fail(path, 1, f"expected a JSON list of {{id, label, template}}, got {type(entries).__name__}")
    samples = []
    for position, entry in enumerate(entries):
        where = f"entry {position}"
        if not isinstance(entry, dict) or "id" not in entry or not ("template" in entry or "label" in entry):
            raise AnnotationError(f"{path}: {where}: expected an object with 'id' and 'template', got {entry!r}")
        name = entry.get("template", entry.get("label", "")).replace("[", "").replace("]", "")
        key = normalize_class_name(name)
        if key not in class_names:
            raise AnnotationError(f"{path}: {where}: template {name!r} is not a class in {labels_path}")
        sample_id = str(entry["id"])
        video = root / f"{sample_id}.webm"
        samples.append(Sample(id=sample_id, path=video, labels={"class": class_names[key]}, where=where))
    return samples


def parse_timestamp(text: str) -> float:
    """Parse EPIC-KITCHENS' ``HH:MM:SS.ff`` into seconds."""
    match = re.fullmatch(r"(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)", text.strip())
    if not match:
        raise ValueError(f"expected HH:MM:SS.ff, got {text!r}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def read_epic(annotations: str | Path, root: str | Path) -> list[Sample]:
    """Read EPIC-KITCHENS-100's ``EPIC_100_validation.csv``: segments of ``{participant}/[videos/]{video_id}.MP4``."""
    path, root = Path(annotations), Path(root)
    required = {"narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp"}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not required | {"verb_class", "noun_class"} <= columns:
            raise _fail(path, 1, f"expected a header with columns {sorted(required)} + verb_class, noun_class")
        samples = []
        for row in reader:
            number = reader.line_num
            try:
                start, end = parse_timestamp(row["start_timestamp"]), parse_timestamp(row["stop_timestamp"])
                labels = {"verb": int(row["verb_class"]), "noun": int(row["noun_class"])}
            except (TypeError, ValueError, AttributeError) as error:
                raise _fail(path, number, f"{error} (timestamps HH:MM:SS.ff, integer verb_class/noun_class)") from None
            if end <= start:
                raise _fail(path, number, f"stop_timestamp {row['stop_timestamp']} is not after the start")
            folder = root / row["participant_id"]
            video = folder / f"{row['video_id']}.MP4"
            if not video.is_file() and (folder / "videos" / video.name).is_file():
                video = folder / "videos" / video.name
            samples.append(
                Sample(row["narration_id"], video, labels, start=start, end=end, where=f"line {number}")
            )
    return samples


def load_samples(
    dataset: str,
    annotations: str | Path,
    root: str | Path,
    class_names: Mapping[str, int] | None = None,
    classes_file: str | Path | None = None,
) -> list[Sample]:
    """Read an annotation file of any supported format (``class_names`` maps Kinetics' names to indices).

    A file that lists no clip (empty, or a header alone) is refused.
    """
    path = check_annotation_file(annotations)
    if not path.read_text().strip():
        raise _no_clips(path, dataset)
    if dataset == "csv":
        samples = read_list(annotations, root)
    elif dataset == "k400":
        names = load_class_names(classes_file) if classes_file else class_names
        if not names:
            raise AnnotationError("Kinetics-400 labels are class names: the model needs id2label, or pass --classes")
        samples = read_kinetics(annotations, root, names)
    elif dataset == "ssv2":
        samples = read_ssv2(annotations, root, classes_file)
    elif dataset == "epic100":
        samples = read_epic(annotations, root)
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    if not samples:
        raise _no_clips(path, dataset)
    _check_unique(samples, annotations)
    return samples


def check_annotation_file(annotations: str | Path) -> Path:
    """``annotations`` as a path, refused when it is missing or a directory."""
    path = Path(annotations)
    if path.is_dir():
        raise AnnotationError(f"annotations {path} is a directory; expected an annotation file (CSV, JSON or list)")
    if not path.is_file():
        raise AnnotationError(f"annotation file not found: {path}")
    return path


def _no_clips(path: Path, dataset: str) -> AnnotationError:
    return AnnotationError(f"annotation file {path} lists no clips; expected at least one ({dataset} format)")


def _check_unique(samples: list[Sample], annotations: str | Path) -> None:
    """Refuse repeated sample ids: results are keyed by id, so a repeat would be counted once."""
    seen: dict[str, str] = {}
    for sample in samples:
        if sample.id in seen:
            raise AnnotationError(f"{annotations}:{sample.where}: sample {sample.id!r} repeats {seen[sample.id]}")
        seen[sample.id] = sample.where


def check_labels(samples: list[Sample], head_sizes: Mapping[str, int], annotations: str | Path) -> None:
    """Refuse labels the model cannot predict (an index outside a head, or a head the model lacks)."""
    for sample in samples:
        for head, label in sample.labels.items():
            if head not in head_sizes:
                raise AnnotationError(
                    f"{annotations}:{sample.where}: sample {sample.id} has a {head!r} label but the model's heads are "
                    f"{sorted(head_sizes)} (EPIC-KITCHENS needs --heads verb:97,noun:300 or a two-head model)"
                )
            if not 0 <= label < head_sizes[head]:
                raise AnnotationError(
                    f"{annotations}:{sample.where}: sample {sample.id}: {head} label {label} is outside the model's "
                    f"{head_sizes[head]} classes (expected 0..{head_sizes[head] - 1})"
                )
