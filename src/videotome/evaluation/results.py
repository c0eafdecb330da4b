"""Results that survive: a JSONL file of runs, written batch by batch and resumable.

A file holds one or more runs. Each run starts with a ``header`` line (its settings, model, library versions and
hardware) and has one ``clip`` line per sample (labels, top-5 predictions with scores, or the error that stopped it)
and a ``summary`` line per finished session (metrics and throughput). A run is identified by a hash of the settings
that change its predictions, so a resumed run continues where it stopped and a run with other settings is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VideotomeError


class ResultsError(VideotomeError, RuntimeError):
    """A results file that cannot be written or resumed as asked."""


def run_id(settings: Mapping[str, Any]) -> str:
    """Return the short hash that identifies a run by its settings."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def settings_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Name each setting that differs between two runs, e.g. ``r: 0 (in the file) != 8 (now)``."""
    keys = sorted(set(old) | set(new))
    changed = [key for key in keys if old.get(key) != new.get(key)]
    return ", ".join(f"{key}: {old.get(key)!r} (in the file) != {new.get(key)!r} (now)" for key in changed)


@dataclass
class Run:
    """One run read back from a results file."""

    header: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    summaries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.header["run"]

    @property
    def settings(self) -> dict[str, Any]:
        return self.header["settings"]


def read_runs(path: str | Path) -> list[Run]:
    """Read every run of a results file, in order; a torn last line (a killed writer) is ignored."""
    runs: dict[str, Run] = {}
    complete = Path(path).read_text().split("\n")[:-1]  # text after the last newline is a torn, unfinished line
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            kind, rid = entry["type"], entry["run"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ResultsError(f"{path}:{number}: not a videotome results line: {line[:80]!r}") from None
        if kind == "header":
            runs.setdefault(rid, Run(header=entry))
        elif rid not in runs:
            raise ResultsError(f"{path}:{number}: line of run {rid} before its header")
        elif kind == "clip":
            runs[rid].records.setdefault(entry["id"], entry)
        elif kind == "summary":
            runs[rid].summaries.append(entry)
    return list(runs.values())


class ResultsWriter:
    """Append-only writer of one run; each batch of lines is flushed and fsynced before the call returns."""

    def __init__(self, path: str | Path, header: dict[str, Any], *, resume: bool, new_runs: bool = False) -> None:
        """Open ``path`` for the run described by ``header`` (see ``harness.make_header``).

        Without ``resume`` the file must be absent or empty. With it, the run with the same settings is continued;
        if the file holds only other runs, ``new_runs`` (sweeps) appends this one, otherwise it is refused.
        """
        self.path = Path(path)
        self.run = header["run"]
        self.done: dict[str, dict[str, Any]] = {}
        self.summaries: list[dict[str, Any]] = []
        existing = read_runs(self.path) if self.path.is_file() and self.path.stat().st_size else []
        if existing and not resume:
            raise ResultsError(
                f"{self.path} already holds results; pass --resume to continue that run, or choose another --out"
            )
        match = next((run for run in existing if run.id == self.run), None)
        if existing and match is None and not new_runs:
            difference = settings_difference(existing[-1].settings, header["settings"])
            raise ResultsError(f"cannot resume {self.path} with different settings: {difference}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self._handle = self.path.open("a", encoding="utf-8")
        if match is None:
            self.write([header])
        else:
            self.done, self.summaries = match.records, match.summaries

    def _drop_torn_tail(self) -> None:
        """Cut a partly written last line left by a killed run, so the next line starts clean."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with self.path.open("r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def write(self, entries: Iterable[Mapping[str, Any]]) -> None:
        """Append lines and make them durable (flush + fsync) before returning."""
        text = "".join(json.dumps(entry) + "\n" for entry in entries)
        if text:
            self._handle.write(text)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def compute_metrics(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy of clip records: top-1/top-5 per head and, with verb and noun heads, action top-1 (both right).

    Accuracies are fractions over the clips that were evaluated and have labels; failed clips are counted apart.
    """
    records = list(records)
    scored = [r for r in records if r.get("error") is None and r.get("labels")]
    metrics: dict[str, Any] = {"clips": len(records), "failed": sum(r.get("error") is not None for r in records)}
    metrics["evaluated"] = metrics["clips"] - metrics["failed"]
    if not scored:
        return metrics
    heads = sorted(scored[0]["labels"])
    hits: dict[str, list[bool]] = {}
    for record in scored:
        for head in heads:
            ranked = [index for index, _ in record["top5"][head]]
            label = record["labels"][head]
            hits.setdefault(f"{head}_top1", []).append(ranked[:1] == [label])
            hits.setdefault(f"{head}_top5", []).append(label in ranked[:5])
        if {"verb", "noun"} <= set(heads):
            hits.setdefault("action_top1", []).append(
                all(record["top5"][h][0][0] == record["labels"][h] for h in ("verb", "noun"))
            )
    metrics.update({name: sum(values) / len(values) for name, values in sorted(hits.items())})
    return metrics
