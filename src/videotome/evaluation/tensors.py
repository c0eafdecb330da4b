"""Evaluating a model on clips already in memory, into the same results files as ``videotome eval``.

The file-based harness decodes videos from disk; generated data (the testbed) is already a tensor. This path feeds
the harness's own scoring loop (:func:`~videotome.evaluation.harness.score`) from tensors instead of a video
loader, so ``results.jsonl`` has the header / clip / summary lines of ``videotome eval`` and ``videotome report``
reads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..distributed import DistContext
from .datasets import Sample
from .harness import Item, make_header, score
from .results import ResultsError, ResultsWriter


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

    def batches(self, batch_size: int, prepare: Callable[[torch.Tensor], torch.Tensor] | None) -> Iterator[list[Item]]:
        """The clips as the scoring loop takes them, ``batch_size`` at a time, through ``prepare`` if given."""
        for start in range(0, len(self.ids), batch_size):
            stop = min(start + batch_size, len(self.ids))
            pixels = self.pixels[start:stop]
            pixels = prepare(pixels) if prepare else pixels
            yield [
                {
                    "sample": Sample(self.ids[i], Path(self.ids[i]), {h: int(v[i]) for h, v in self.labels.items()}),
                    "pixels": pixels[i - start],
                    "error": None,
                }
                for i in range(start, stop)
            ]


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

    ``settings`` defines the run as in ``videotome eval`` (at least ``model``, ``model_type``, ``dataset`` and
    ``merge``, a :meth:`~videotome.plan.MergeSettings.to_dict`); ``out`` may hold other runs, but not this one.
    ``prepare`` maps a batch of pixels to the model's input (e.g. frame selection). ``throughput`` replaces the
    speed measured during this pass (e.g. with an interleaved timing); returns the summary line.
    """
    settings = dict(settings)
    missing = {"model", "model_type", "dataset", "merge"} - set(settings)
    if missing:
        raise ValueError(f"settings lack {sorted(missing)}")
    device = clips.pixels.device
    header = make_header(settings, batch_size=batch_size, workers=0, device=device)
    with ResultsWriter(out, header, resume=True, new_runs=True) as writer:
        if writer.done:
            raise ResultsError(f"{out} already holds run {header['run']} ({settings['model']}); choose another file")
        return score(
            model,
            clips.batches(batch_size, prepare),
            heads=dict(heads) if heads else None,
            header=header,
            writer=writer,
            records={},
            context=DistContext(0, 1, device),
            total=len(clips.ids),
            frames=int(clips.pixels.shape[1]) if prepare is None else int(prepare(clips.pixels[:1]).shape[1]),
            progress=progress,
            throughput=throughput,
        )
