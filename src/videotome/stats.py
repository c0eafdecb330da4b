"""Per-layer merge statistics of one forward: what each reduction chose, for analysis (``record_stats=True``).

A :class:`ReductionRecord` holds tensors only (no host sync inside the forward); :func:`summarize` turns the records
of a forward into plain numbers, one dict per layer. Knows nothing of models: the adapters hand in the metric the
matching used, the reduction, and, for joint space-time models, which frames each current token holds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import merge


class ReductionRecord(NamedTuple):
    """One reduction step: the chosen pairs' key cosines (rows, r), whether each was merged (not dropped), how many
    clips the rows belong to, and, where it applies, whether each pair's tokens hold patches of different frames."""

    cosine: Tensor
    merged: Tensor
    clips: int
    temporal: Tensor | None = None


def record_reduction(
    reduction: merge.Reduction, metric: Tensor, *, clips: int, frames_held: Tensor | None = None
) -> ReductionRecord:
    """The record of ``reduction`` prepared from ``metric`` (rows, tokens, C).

    ``frames_held`` (rows, tokens, frames) marks the frames whose patches each token holds (joint space-time models);
    a pair is temporal when its two tokens' frame sets differ.
    """
    src, dst = merge.pair_positions(reduction, metric.shape[1])
    unit = metric.float() / metric.float().norm(dim=-1, keepdim=True)
    cosine = (merge.take(unit, src) * merge.take(unit, dst)).sum(dim=-1)
    merged = torch.ones_like(cosine, dtype=torch.bool) if reduction.weight is None else reduction.weight > 0
    temporal = None
    if frames_held is not None:
        temporal = (merge.take(frames_held, src) != merge.take(frames_held, dst)).any(dim=-1)
    return ReductionRecord(cosine, merged, clips, temporal)


def frames_held(source: Tensor | None, input_frames: Tensor, batch: int) -> Tensor:
    """(batch, tokens, frames) bool: which frames' patches each token holds, from the source map (None: each of the
    input tokens holds itself). ``input_frames`` is each input token's frame, -1 for a class token."""
    frames = int(input_frames.max()) + 1
    one_hot = torch.zeros(input_frames.shape[0], frames, device=input_frames.device)
    patches = input_frames >= 0
    one_hot[patches, input_frames[patches]] = 1
    if source is None:
        return (one_hot > 0).expand(batch, -1, -1)
    return (source @ one_hot.to(source.dtype)) > 0


def added_record(records: tuple[ReductionRecord, ...], before: int) -> ReductionRecord | None:
    """The record a step added to ``records`` (which held ``before`` of them), or None when it reduced nothing."""
    return records[before] if len(records) > before else None


def summarize(layers: list[tuple[int, int, int, ReductionRecord | None]]) -> list[dict[str, Any]]:
    """Plain per-layer statistics from (layer, tokens in, tokens out, record or None) of one forward.

    ``merged``/``dropped`` are per clip (averaged over the batch); cosines are over every chosen pair of the batch;
    ``temporal_share`` is the share of merged pairs whose tokens hold patches of different frames (joint
    space-time models only). Values that do not apply are None.
    """
    rows = []
    for layer, tokens_in, tokens_out, record in layers:
        row: dict[str, Any] = {"layer": layer, "tokens_in": tokens_in, "tokens_out": tokens_out, "merged": 0.0,
                               "dropped": 0.0, "cosine_mean": None, "cosine_min": None, "cosine_max": None,
                               "temporal_share": None}
        if record is not None and record.cosine.numel():
            merged = record.merged
            row["merged"] = merged.sum().item() / record.clips
            row["dropped"] = (~merged).sum().item() / record.clips
            cosine = record.cosine.float()
            row.update(cosine_mean=cosine.mean().item(), cosine_min=cosine.min().item(),
                       cosine_max=cosine.max().item())
            if record.temporal is not None and merged.any():
                row["temporal_share"] = record.temporal[merged].float().mean().item()
        rows.append(row)
    return rows
