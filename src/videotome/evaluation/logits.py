"""Every clip's logits, beside its results file (``videotome eval --save-logits``), resumable as the results are.

``RUN.jsonl`` keeps them in the folder ``RUN.logits/``: one folder per run (its id, as in the results lines), and in
it one safetensors shard per written batch, ``00000.safetensors``, ``00001.safetensors``, ... Each shard maps
``"{head}/{clip id}"`` to that clip's float32 logits of that head (1-D). A shard is written to a temporary file and
renamed into place before the batch's results lines are written, so a killed run leaves whole shards only; on
resume, the entries of clips whose results lines never made it are dropped (their clips run again), so every clip
has exactly one entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .results import ResultsError

SHARD_SUFFIX = ".safetensors"
Logits = dict[str, dict[str, torch.Tensor]]
"""Logits by clip id, then by head."""


def logits_path(results: str | Path) -> Path:
    """The folder that holds the logits of a results file's runs: ``RUN.jsonl`` -> ``RUN.logits``."""
    return Path(results).with_suffix(".logits")


def _key(head: str, clip: str) -> str:
    return f"{head}/{clip}"


def _split(key: str) -> tuple[str, str]:
    """(head, clip id) of a shard key; head names hold no ``/``, clip ids may."""
    head, _, clip = key.partition("/")
    return head, clip


def _shards(directory: Path) -> list[Path]:
    """A run's shards in the order they were written (temporary files of a killed write left out)."""
    return sorted(directory.glob(f"*{SHARD_SUFFIX}"), key=lambda path: int(path.stem))


def _save(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write a shard atomically: a temporary file, synced, then renamed into place."""
    temporary = path.with_name(path.name + ".tmp")
    save_file(dict(tensors), temporary)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class LogitsWriter:
    """Writes one run's logits, a shard per batch, into ``logits_path(results)/RUN``."""

    def __init__(self, results: str | Path, run: str, done: Mapping[str, Mapping]) -> None:
        """Open run ``run``'s folder; ``done`` holds the run's clip lines already in the results file.

        Entries of clips not in ``done`` (written just before a kill) are dropped. Clips done without logits (the
        run started without ``--save-logits``) are refused: their logits cannot be had without running them again.
        """
        self.directory = logits_path(results) / run
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink()
        kept = self._keep_only(set(done))
        missing = sorted(clip for clip, line in done.items() if line.get("error") is None and clip not in kept)
        if missing:
            raise ResultsError(
                f"{len(missing)} clips of run {run} in {results} were evaluated without --save-logits (e.g. "
                f"{missing[0]}): their logits cannot be added now; evaluate into a new --out"
            )
        shards = _shards(self.directory)
        self._next = int(shards[-1].stem) + 1 if shards else 0

    def _keep_only(self, done: set[str]) -> set[str]:
        """Drop the entries of clips not in ``done`` (rewriting or removing their shards); the clips left."""
        kept: set[str] = set()
        for shard in _shards(self.directory):
            with safe_open(str(shard), framework="pt") as handle:
                keys = list(handle.keys())
            wanted = [key for key in keys if _split(key)[1] in done]
            if len(wanted) < len(keys):
                tensors = load_file(shard)
                if wanted:
                    _save({key: tensors[key] for key in wanted}, shard)
                else:
                    shard.unlink()
            kept.update(_split(key)[1] for key in wanted)
        return kept

    def write(self, logits: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        """Write one batch's logits (clip id -> head -> 1-D logits) as the next shard (nothing when empty)."""
        heads = {head for per_clip in logits.values() for head in per_clip}
        if any("/" in head for head in heads):
            raise ValueError(f"head names cannot hold '/' in saved logits: {sorted(heads)}")
        tensors = {
            _key(head, clip): values.detach().float().cpu().contiguous().clone()
            for clip, heads in logits.items()
            for head, values in heads.items()
        }
        if not tensors:
            return
        _save(tensors, self.directory / f"{self._next:05d}{SHARD_SUFFIX}")
        self._next += 1


def logged_runs(results: str | Path) -> list[str]:
    """The ids of the runs that have logits beside ``results``."""
    root = logits_path(results)
    return sorted(path.name for path in root.iterdir() if path.is_dir()) if root.is_dir() else []


def read_logits(results: str | Path, run: str | None = None) -> Logits:
    """Every clip's logits of one run of ``results`` (clip id -> head -> float32 1-D tensor).

    ``run`` is the run's id; without it, the file's only run with logits. Refused (``ResultsError``) when there are
    no logits, when ``run`` has none, or when several runs have some and ``run`` is not given (naming their ids).
    """
    runs = logged_runs(results)
    root = logits_path(results)
    if not runs:
        raise ResultsError(f"no logits beside {results} (expected {root}/RUN/): evaluate with --save-logits")
    if run is None and len(runs) > 1:
        raise ResultsError(f"{root} holds the logits of {len(runs)} runs ({', '.join(runs)}): choose one by its id")
    if run is not None and run not in runs:
        raise ResultsError(f"{root} has no logits of run {run}; it has those of {', '.join(runs)}")
    found: Logits = {}
    for shard in _shards(root / (run or runs[0])):
        for key, values in load_file(shard).items():
            head, clip = _split(key)
            if head in found.setdefault(clip, {}):
                raise ResultsError(f"{shard}: a second entry for clip {clip!r} head {head!r}")
            found[clip][head] = values
    return found


def clip_logits(ids: Iterable[str], logits: Mapping[str, torch.Tensor]) -> Logits:
    """One batch's logits per clip: row ``i`` of every head's (clips, classes) tensor belongs to ``ids[i]`` (copied,
    so that a clip sent to another rank carries its own row only)."""
    return {clip: {head: values[row].clone() for head, values in logits.items()} for row, clip in enumerate(ids)}
