"""The demo's figure of which patches each merged token holds (as in the paper); its accuracy plots are
``videotome report``'s."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import videotome

from ..evaluation.report import pyplot
from .models import CHECKPOINTS, frame_indices, load_checkpoint, select_frames
from .settings import operating_point, patched_copy


def token_owners(model: torch.nn.Module, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For one clip through a model patched with ``trace_source=True``: the final token holding each input token
    (-1 where it was dropped) and the input tokens' (time step, row, column), class tokens left out."""
    with torch.inference_mode():
        model(pixel_values=pixels.unsqueeze(0))
    held = videotome.sources(model)[0]  # (final tokens, input tokens)
    grid = videotome.token_grid(model)
    patches = grid[:, 0] >= 0
    owners = torch.where(held.sum(0) > 0, held.argmax(0), torch.full_like(held.argmax(0), -1))
    return owners[patches].numpy(), grid[patches].numpy()


def paint(owners: np.ndarray, grid: np.ndarray, step: int, shape: tuple[int, int], patch: int) -> np.ndarray:
    """An RGBA (H, W, 4) overlay for time step ``step``: each patch in its owner's colour, dropped patches black."""
    plt = pyplot()
    count = max(1, int(owners.max()) + 1)
    palette = plt.get_cmap("tab20") if count <= 20 else plt.get_cmap("hsv")
    colours = palette(np.random.default_rng(0).permutation(count) / count)
    overlay = np.zeros((*shape, 4))
    for owner, (time_step, row, column) in zip(owners, grid):
        if time_step != step:
            continue
        colour = colours[owner] if owner >= 0 else np.array([0.0, 0.0, 0.0, 1.0])
        overlay[row * patch : (row + 1) * patch, column * patch : (column + 1) * patch] = colour
    overlay[..., 3] = np.where(overlay[..., 3] > 0, 0.55, 0.0)
    return overlay


def frame_steps(model: torch.nn.Module, total: int) -> list[int | None]:
    """For each frame of a ``total``-frame clip, the time step of the model's token grid it feeds, or None when the
    model does not see it (TimeSformer sees 8 of 16); a tubelet of several frames feeds one step."""
    tubelet = getattr(model.config, "tubelet_size", 1)
    tubelet = int(tubelet[0] if isinstance(tubelet, (list, tuple)) else tubelet)
    steps: list[int | None] = [None] * total
    for position, frame in enumerate(frame_indices(model, total)):
        if steps[frame] is None:
            steps[frame] = position // tubelet
    return steps


def plot_merges(
    models: Sequence[str], clip: torch.Tensor, path: Path, checkpoints: str | Path = CHECKPOINTS
) -> Path:
    """One validation clip, every frame, each final token of the merged model (paper's operating point, merge,
    constant schedule) painted in its own colour over the patches it holds; one row per model. Frames a model does
    not see are drawn faded, titled "not seen" (TimeSformer sees every second frame)."""
    plt = pyplot()
    total_frames = clip.shape[0]
    figure, axes = plt.subplots(len(models), total_frames, figsize=(1.1 * total_frames, 1.3 * len(models)),
                                squeeze=False)
    for axes_row, arch in zip(axes, models):
        model = load_checkpoint(arch, checkpoints)
        settings = operating_point(model, arch)
        merged = patched_copy(model, settings, trace_source=True)
        owners, grid = token_owners(merged, select_frames(model, clip.unsqueeze(0))[0])
        patch = clip.shape[-1] // (int(grid[:, 2].max()) + 1)
        for index, (axis, step) in enumerate(zip(axes_row, frame_steps(model, total_frames))):
            axis.axis("off")
            picture = ((clip[index].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
            if step is None:
                axis.imshow(picture, interpolation="nearest", alpha=0.25)
                axis.set_title(f"{index}: not seen", fontsize=5)
                continue
            axis.imshow(picture, interpolation="nearest")
            axis.imshow(paint(owners, grid, step, picture.shape[:2], patch), interpolation="nearest")
            axis.set_title(f"{index}", fontsize=5)
        axes_row[0].annotate(f"{arch} (r={settings.r})", (-0.08, 0.5), xycoords="axes fraction", rotation=90,
                             ha="right", va="center", fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
