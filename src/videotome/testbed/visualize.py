"""The demo's figure of which patches each merged token holds (as in the paper, painted by
:mod:`videotome.analysis.pictures`); its accuracy plots are ``videotome report``'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import videotome

from ..analysis.pictures import MergeRow, owner_map
from ..analysis.pictures import plot_merges as draw_merges
from ..analysis.visualize import frames_per_step
from .models import CHECKPOINTS, frame_indices, load_checkpoint, select_frames
from .settings import operating_point, patched_copy


def frame_steps(model: torch.nn.Module, total: int) -> list[int | None]:
    """For each frame of a ``total``-frame clip, the time step of the model's token grid it feeds, or None when the
    model does not see it (TimeSformer sees 8 of 16); a tubelet of several frames feeds one step."""
    tubelet = frames_per_step(model.config)
    steps: list[int | None] = [None] * total
    for position, frame in enumerate(frame_indices(model, total)):
        if steps[frame] is None:
            steps[frame] = position // tubelet
    return steps


def plot_merges(
    models: Sequence[str], clip: torch.Tensor, path: Path, checkpoints: str | Path = CHECKPOINTS
) -> Path:
    """One validation clip, every frame, each final token of the merged model (paper's operating point, merge,
    constant schedule) painted over the patches it holds (:func:`videotome.analysis.pictures.plot_merges`); one
    row per model. Frames a model does not see are drawn faded, titled "not seen" (TimeSformer sees every second
    frame)."""
    frames = ((clip.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    rows = []
    for arch in models:
        model = load_checkpoint(arch, checkpoints)
        settings = operating_point(model, arch)
        merged = patched_copy(model, settings, trace_source=True)
        with torch.inference_mode():
            merged(pixel_values=select_frames(model, clip.unsqueeze(0)))
        owners = owner_map(videotome.sources(merged)[0], videotome.token_grid(merged))
        rows.append(MergeRow(f"{arch} (r={settings.r})", frames, frame_steps(model, len(frames)), owners))
    return draw_merges(rows, path)
