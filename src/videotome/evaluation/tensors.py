"""Evaluating a model on clips already in memory, into the same results files as ``videotome eval``.

The file-based harness decodes videos from disk; generated data (the testbed) is already a tensor. This path skips
decoding but keeps everything else: ``videotome.patch`` settings, the header / clip / summary lines of
:mod:`~videotome.evaluation.results` (so :func:`~videotome.evaluation.report.collect_rows` and ``videotome report``
read them), per-head top-5 records and :func:`~videotome.evaluation.results.compute_metrics`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .datasets import Sample
from .harness import clip_records, forward_batch, make_header
from .results import ResultsError, ResultsWriter, compute_metrics


@dataclass
class TensorClips:
    """Clips ready for a model: ``pixels`` (N, frames, 3, H, W) and integer labels per head, each (N,)."""

    ids: Sequence[str]
    pixels: torch.Tensor
    labels: Mapping[str, torch.Tensor]

    def __post_init__(self) -> None:
        count = len(self.ids)
        sizes = {name: len(values) for name, values in self.labels.items()}
        if self.pixels.shape[0] != count or any(size != count for size in sizes.values()):
            raise ValueError(f"{count} ids need as many clips and labels; got {self.pixels.shape[0]} clips, {sizes}")


def evaluate_tensors(
    model: torch.nn.Module,
    clips: TensorClips,
    settings: Mapping[str, Any],
    out: str | Path,
    *,
    heads: Mapping[str, int] | None = None,
    batch_size: int = 64,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    throughput: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Classify every clip with ``model`` (already patched as ``settings`` says) and append the run to ``out``.

    ``settings`` defines the run as in ``videotome eval`` (at least ``model``, ``model_type``, ``dataset``, ``r``,
    ``strategy``, ``schedule``); ``out`` may hold other runs, but not this one. ``prepare``
    maps a batch of pixels to the model's input (e.g. frame selection). ``throughput`` replaces the speed measured
    during this pass (e.g. with an interleaved timing); returns the summary line.
    """
    settings = dict(settings)
    missing = {"model", "model_type", "dataset", "r", "strategy", "schedule"} - set(settings)
    if missing:
        raise ValueError(f"settings lack {sorted(missing)}")
    header = make_header(settings, batch_size=batch_size, workers=0, device=clips.pixels.device)
    rid = header["run"]
    brief = {key: settings[key] for key in ("model", "dataset", "r", "strategy", "schedule")}
    records: dict[str, dict[str, Any]] = {}
    seconds = 0.0
    with ResultsWriter(out, header, resume=True, new_runs=True) as writer:
        if writer.done:
            raise ResultsError(f"{out} already holds run {rid} ({settings['model']}); choose another file")
        bar = tqdm(total=len(clips.ids), desc=f"eval {settings['model']}", unit="clip", disable=not progress,
                   file=sys.stderr, leave=False)
        for start in range(0, len(clips.ids), batch_size):
            stop = min(start + batch_size, len(clips.ids))
            pixels = clips.pixels[start:stop]
            pixels = prepare(pixels) if prepare else pixels
            probabilities, took = forward_batch(model, pixels, dict(heads) if heads else None)
            seconds += took
            items = [
                {
                    "sample": Sample(clips.ids[i], Path(clips.ids[i]), {h: int(v[i]) for h, v in clips.labels.items()}),
                    "error": None,
                }
                for i in range(start, stop)
            ]
            lines = [{"type": "clip", "run": rid, **record} for record in clip_records(items, probabilities, brief)]
            writer.write(lines)
            records.update((line["id"], line) for line in lines)
            bar.update(stop - start)
        bar.close()
        frames = int(clips.pixels.shape[1])
        measured = {
            "model_clips_per_s": len(clips.ids) / seconds if seconds > 0 else 0.0,
            "model_frames_per_s": len(clips.ids) * frames / seconds if seconds > 0 else 0.0,
            "end_to_end_clips_per_s": len(clips.ids) / seconds if seconds > 0 else 0.0,
            "clips_timed": len(clips.ids),
            "world_size": 1,
        }
        summary = {
            "type": "summary",
            "run": rid,
            "settings": brief,
            "metrics": compute_metrics(records.values()),
            "throughput": {**measured, **(throughput or {})},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        writer.write([summary])
    return summary
