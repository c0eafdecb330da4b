"""Pictures of merged tokens in the paper's style: each final token painted over the patches it holds.

A token has a fill colour and an edge colour (drawn where its patches meet another token's), so that more than 20
tokens stay apart; dropped patches are black. One painting function serves the still picture (``plot_merges``: a
row per model or per layer, a column per frame) and the video (``write_video``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from torch import Tensor

from ..evaluation.report import pyplot

#: edge colours, cycled against the 20 fill colours: token k gets fill k % 20 and edge (k + k // 20) % 8, so the
#: (fill, edge) pairs of the first 160 tokens all differ
EDGE_COLOURS = np.array(
    [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 200, 0), (0, 80, 255), (255, 220, 0), (255, 0, 255), (0, 230, 230)],
    dtype=np.float64,
)
FILL_ALPHA = 0.55


def owner_map(sources: Tensor, grid: Tensor) -> np.ndarray:
    """The final token holding each patch, (time steps, rows, columns), -1 where the patch was dropped, from one
    clip's (tokens, input tokens) map (:func:`videotome.sources`) and the token grid (:func:`videotome.token_grid`;
    class tokens left out). A patch held by two tokens is refused: a source map never shares a patch."""
    held = sources > 0
    holders = held.sum(0)
    if int(holders.max()) > 1:
        raise ValueError(f"{int((holders > 1).sum())} patches are held by more than one token")
    patches = grid[:, 0] >= 0
    owners = np.where(holders > 0, held.int().argmax(0), -1)[patches.numpy()]
    where = grid[patches].numpy()
    shape = where.max(0) + 1
    painted = np.full(shape, -1, dtype=np.int64)
    painted[where[:, 0], where[:, 1], where[:, 2]] = owners
    return painted


def token_colours(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Fill and edge RGB colours (count, 3) of ``count`` tokens, the same for the same count."""
    from matplotlib import colormaps

    fills = np.array(colormaps["tab20"].colors)[np.random.default_rng(0).permutation(20)] * 255
    index = np.arange(count)
    return fills[index % 20], EDGE_COLOURS[(index + index // 20) % len(EDGE_COLOURS)]


def paint(frame: np.ndarray, owners: np.ndarray, colours: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A (H, W, 3) uint8 frame with each patch of one time step's ``owners`` (rows, columns) painted in its token's
    fill colour, token borders in its edge colour, dropped patches black."""
    height, width = frame.shape[:2]
    rows, columns = owners.shape
    pixel_owner = owners[(np.arange(height) * rows) // height][:, (np.arange(width) * columns) // width]
    fills, edges = colours
    kept = pixel_owner >= 0
    safe = np.where(kept, pixel_owner, 0)
    out = np.where(kept[..., None], (1 - FILL_ALPHA) * frame + FILL_ALPHA * fills[safe], 0.0)
    line = max(1, min(height // rows, width // columns) // 8)
    padded = np.pad(pixel_owner, line, mode="edge")  # the frame's own edge is no token border
    border = np.zeros_like(kept)
    for shift in range(-line, line + 1):
        border |= padded[line + shift : line + shift + height, line : line + width] != pixel_owner
        border |= padded[line : line + height, line + shift : line + shift + width] != pixel_owner
    edge = border & kept
    out[edge] = edges[safe[edge]]
    return out.round().clip(0, 255).astype(np.uint8)


@dataclass
class MergeRow:
    """One row of the picture: its label, the frames (F, H, W, 3) uint8, each frame's time step in the token grid
    (None: a frame the model does not see, drawn faded) and the owner map (:func:`owner_map`)."""

    label: str
    frames: np.ndarray
    steps: Sequence[int | None]
    owners: np.ndarray


def painted_frames(row: MergeRow) -> list[np.ndarray | None]:
    """Each frame of ``row`` painted with its time step's owners (None for a frame the model does not see)."""
    colours = token_colours(int(row.owners.max()) + 1)
    return [None if step is None else paint(frame, row.owners[step], colours)
            for frame, step in zip(row.frames, row.steps)]


def plot_merges(rows: Sequence[MergeRow], path: Path) -> Path:
    """The merges picture: one row per entry of ``rows``, one panel per frame titled by its index, frames the
    model does not see drawn faded and titled "not seen"."""
    plt = pyplot()
    columns = max(len(row.frames) for row in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns, 1.3 * len(rows)), squeeze=False)
    for axes_row, row in zip(axes, rows):
        for axis in axes_row:
            axis.axis("off")
        for index, (axis, frame, painted) in enumerate(zip(axes_row, row.frames, painted_frames(row))):
            if painted is None:
                axis.imshow(frame, interpolation="nearest", alpha=0.25)
                axis.set_title(f"{index}: not seen", fontsize=5)
            else:
                axis.imshow(painted, interpolation="nearest")
                axis.set_title(f"{index}", fontsize=5)
        axes_row[0].annotate(row.label, (-0.08, 0.5), xycoords="axes fraction", rotation=90, ha="right",
                             va="center", fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def write_video(rows: Sequence[MergeRow], path: Path, fps: float, min_height: int = 112) -> Path:
    """The merges as an H.264 (yuv420p) mp4 at ``fps``: each video frame stacks that frame of every row (seen
    frames only), enlarged by a whole factor to at least ``min_height`` pixels a row, padded to even sides."""
    import av

    stacks = [[frame for frame in painted_frames(row) if frame is not None] for row in rows]
    scale = max(1, -(-min_height // rows[0].frames.shape[1]))
    images = []
    for frames in zip(*stacks):
        image = np.concatenate(frames, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
        images.append(np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0))))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
