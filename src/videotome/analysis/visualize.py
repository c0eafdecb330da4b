"""``videotome visualize``'s library side: which patches each token holds after chosen layers of a merged model.

The video is decoded, sampled and preprocessed exactly as ``videotome eval`` feeds it
(:func:`videotome.evaluation.video.read_input`, with the loading of :func:`videotome.evaluation.harness.load_model`).
The merges after layer K come from a copy patched with the same settings but an explicit schedule: the plan's r up
to layer K and 0 after it, traced with :func:`videotome.sources`. When the settings remove nothing (r = 0, the
default) the picture takes the paper's operating point (:func:`videotome.plan.operating_r`): an unmerged model has
nothing to show.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

import videotome

from ..errors import VideotomeError
from ..evaluation.harness import LoadedModel, load_model, model_directory
from ..evaluation.report import pyplot
from ..evaluation.video import FAMILY_DEFAULTS, frame_rate, read_input
from ..loading import IMAGE_MODEL_TYPES
from ..options import option
from ..adapters import find_adapter
from ..plan import MergeSettings, operating_r
from .duplicate import duplicate_layer
from .nearest import nearest_donor
from .pictures import MergeRow, owner_map, plot_merges, write_video
from .splice import cross_clip_share, splice, step_origins


class VisualizeError(VideotomeError, ValueError):
    """A visualisation that cannot be made from the options given."""


@dataclass
class VisualizeConfig:
    """Everything ``videotome visualize`` needs; each field is one of its flags."""

    model: str = option(help="checkpoint directory (what videotome eval reads), or testbed:ARCH")
    video: str = option(help="the video to show")
    merge: MergeSettings = field(
        default_factory=MergeSettings,
        metadata={"help": "token reduction (videotome.patch); r = 0 shows the paper's operating point"},
    )
    layers: tuple[int, ...] | None = option(None, "the layers (from 0) after which to show the merges, one row "
                                                  "each (default: the last)", metavar="K")
    out: str = option("visualize_out", "output folder")
    frames: int | None = option(None, "frames per clip (default: the model's)")
    start_time: float | None = option(None, "start of the clip in seconds (default: eval's view of the whole video)",
                                      metavar="SECONDS")
    duplicate_layer: int | None = option(None, "also show layer K's merging applied --times times", metavar="K")
    times: int | None = option(None, "copies of --duplicate-layer's merging", metavar="N")
    splice: str | None = option(None, "donor video whose frames replace every other group of frames",
                                metavar="DONOR_VIDEO")
    splice_every: int | None = option(None, "frames per spliced group (default: the model's tubelet)", metavar="G")
    splice_nearest: str | None = option(None, "results file whose saved logits choose the donor of --video-id: "
                                              "the nearest clip of its class", metavar="RUN.jsonl")
    video_id: str | None = option(None, "the clip id of --video in --splice-nearest's results", metavar="ID")
    progress: bool = option(True, "hide the progress bar", flag="--no-progress")

    def __post_init__(self) -> None:
        pairs = (("times", "duplicate_layer"), ("duplicate_layer", "times"), ("splice_every", "splice"),
                 ("video_id", "splice_nearest"), ("splice_nearest", "video_id"))
        for name, needs in pairs:
            if getattr(self, name) is not None and getattr(self, needs) is None:
                raise VisualizeError(f"--{name.replace('_', '-')} needs --{needs.replace('_', '-')}")
        if self.splice is not None and self.splice_nearest is not None:
            raise VisualizeError("--splice and --splice-nearest both choose the donor; give one")
        for name in ("frames", "times", "splice_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise VisualizeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.start_time is not None and self.start_time < 0:
            raise VisualizeError(f"--start-time must be >= 0 seconds, got {self.start_time}")


@dataclass
class Clip:
    """A decoded clip: its frames as the model sees them (T, h, w, 3) uint8, the model's input (T, 3, h, w), and
    which frames came from a splice's donor (None: no splice)."""

    frames: np.ndarray
    pixels: Tensor
    from_donor: Tensor | None = None


def frames_per_step(config: Any) -> int:
    """How many input frames one time step of the token grid holds: the tubelet (1 for frame-wise models)."""
    tubelet = getattr(config, "tubelet_size", 1)
    return int(tubelet[0] if isinstance(tubelet, (list, tuple)) else tubelet)


def frame_wise(model: nn.Module) -> bool:
    """Whether the model is an image backbone that sees a clip's frames as a batch of images."""
    return model.config.model_type in IMAGE_MODEL_TYPES


def model_input(model: nn.Module, pixels: Tensor) -> Tensor:
    """One clip's (T, 3, h, w) pixels as the model takes them: a batch of images, or a batch of one clip."""
    return pixels if frame_wise(model) else pixels.unsqueeze(0)


def clip_view(model: nn.Module, sources: Tensor, grid: Tensor) -> tuple[Tensor, Tensor]:
    """One clip's (1, tokens, input tokens) source map and (input tokens, 3) grid: a video model's own; an image
    model's frames joined, each frame's final tokens in turn, its patches at time step = frame."""
    if not frame_wise(model):
        return sources, grid
    frames = sources.shape[0]
    joined = torch.block_diag(*sources.unbind(0)).unsqueeze(0)
    grids = [torch.where(grid[:, :1] >= 0, torch.cat([torch.full_like(grid[:, :1], t), grid[:, 1:]], 1), grid)
             for t in range(frames)]
    return joined, torch.cat(grids)


def picture_settings(model: nn.Module, settings: MergeSettings) -> MergeSettings:
    """The settings a picture shows: ``settings``, or the paper's operating point when they remove nothing."""
    if settings.reduces:
        return settings
    return replace(settings, r=operating_r(find_adapter(model).layout(model)))


def check_settings(merged: nn.Module) -> None:
    """Refuse an r a patched model cannot take: more tokens than its first merging layer can remove."""
    for step in videotome.plan(merged).steps():
        if step.requested_r:
            if step.requested_r > step.effective_r:
                raise VisualizeError(
                    f"r={step.requested_r} in layer {step.layer} is more than the model can remove there "
                    f"(at most {step.effective_r} of {step.tokens_in} tokens); choose a smaller --reduce"
                )
            return


def check_layer(model: nn.Module, layer: int) -> None:
    """Refuse a layer index outside the model."""
    count = len(find_adapter(model).layers(model))
    if not 0 <= layer < count:
        raise VisualizeError(f"layer {layer} is out of range; the model has layers 0 to {count - 1}")


def forward(model: nn.Module, pixels: Tensor) -> None:
    """One traced forward of a clip; a model that rejects the clip's shape is refused in one line."""
    try:
        with torch.inference_mode():
            model(pixel_values=model_input(model, pixels))
    except RuntimeError as error:
        raise VisualizeError(f"the model rejects a clip of shape {tuple(pixels.shape)} (check --frames): "
                             f"{str(error).splitlines()[0]}") from error


def traced(model: nn.Module, sources: Tensor) -> tuple[Tensor, Tensor]:
    """One clip's source map and grid (:func:`clip_view`), checked against the model's configured token grid."""
    grid = videotome.token_grid(model)
    if grid.shape[0] != sources.shape[-1]:
        raise VisualizeError(f"the input has {sources.shape[-1]} tokens, the model's configured grid "
                             f"{grid.shape[0]}: give the frames and size it was configured for (--frames)")
    return clip_view(model, sources, grid)


def merges_after(
    merged: nn.Module, pixels: Tensor, settings: MergeSettings, r: tuple[int, ...], layer: int
) -> tuple[Tensor, Tensor]:
    """One clip's (1, tokens, input tokens) source map and grid after ``layer``: ``merged`` (a copy of the model)
    patched with ``settings`` but their per-layer ``r`` (their plan's) up to ``layer`` and none after it."""
    check_layer(merged, layer)
    schedule = tuple(r[: layer + 1]) + (0,) * (len(r) - layer - 1)
    videotome.patch(merged, replace(settings, schedule=schedule), trace_source=True)
    forward(merged, pixels)
    return traced(merged, videotome.sources(merged))


def read_clip_input(loaded: LoadedModel, path: str | Path, start: float | None) -> Clip:
    """A video as ``videotome eval`` feeds the model (from ``start`` seconds when given)."""
    frames, pixels = read_input(path, loaded.sampling, loaded.preprocessing, start)
    return Clip(frames, pixels)


def spliced(source: Clip, donor: Clip, every: int) -> Clip:
    """``source`` with every other group of ``every`` frames from ``donor`` (:func:`~.splice.splice`)."""
    frames, from_donor = splice(torch.from_numpy(source.frames), torch.from_numpy(donor.frames), every)
    pixels, _ = splice(source.pixels, donor.pixels, every)
    return Clip(frames.numpy(), pixels, from_donor)


def token_records(owners: np.ndarray, steps: list[int]) -> list[dict[str, Any]]:
    """Per final token: its size (patches held), the clip frames it spans and its patches as [t, row, col]."""
    records = []
    for token in range(int(owners.max()) + 1):
        patches = np.argwhere(owners == token)
        held = {int(t) for t in patches[:, 0]}
        records.append({"token": token, "size": len(patches),
                        "frames": [frame for frame, step in enumerate(steps) if step in held],
                        "patches": patches.tolist()})
    return records


def plot_layers(stats: list[dict[str, Any]], duplication: list[dict[str, Any]] | None, path: Path) -> Path:
    """Tokens after each layer and the chosen pairs' key cosines (mean, min, max); the duplicated layer's copies
    beside them when there are some."""
    plt = pyplot()
    series = [("layer", stats)] + ([("copy of the duplicated layer", duplication)] if duplication else [])
    figure, axes = plt.subplots(2, len(series), figsize=(4 * len(series), 5), squeeze=False)
    for column, (name, rows) in enumerate(series):
        x = [row["layer"] for row in rows]
        axes[0, column].plot(x, [row["tokens_out"] for row in rows], marker="o")
        axes[0, column].set_ylabel("tokens out")
        for key in ("cosine_mean", "cosine_min", "cosine_max"):
            points = [(i, row[key]) for i, row in zip(x, rows) if row[key] is not None]
            if points:
                axes[1, column].plot(*zip(*points), marker=".", label=key.removeprefix("cosine_"))
        axes[1, column].set_ylabel("key cosine of merged pairs")
        axes[1, column].set_xlabel(name)
        axes[1, column].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def visualize(config: VisualizeConfig) -> dict[str, Any]:
    """Write ``merges.png``, ``merges.mp4``, ``tokens.json``, ``layers.json`` and ``layers.png`` into
    ``config.out``; returns their paths, the settings shown and (when splicing) the cross-clip share."""
    directory = model_directory(config.model)
    loaded = load_model(directory, torch.device("cpu"), config.frames, model_types=tuple(FAMILY_DEFAULTS))
    model = loaded.model
    settings = picture_settings(model, config.merge)
    merged = videotome.patch(copy.deepcopy(model), settings)  # one copy, patched again for each view
    check_settings(merged)
    r = videotome.plan(merged).r
    layers = config.layers or (len(find_adapter(model).layers(model)) - 1,)
    for layer in (*layers, *(() if config.duplicate_layer is None else (config.duplicate_layer,))):
        check_layer(model, layer)
    donor_path = config.splice
    if config.splice_nearest is not None:
        _, donor_path = nearest_donor(config.splice_nearest, config.video_id)
    paths = [config.video] + ([donor_path] if donor_path is not None else [])
    clips = [read_clip_input(loaded, path, config.start_time)
             for path in tqdm(paths, desc="decoding", unit="video", disable=not config.progress)]
    clip = clips[0]
    per_step = frames_per_step(model.config)
    if donor_path is not None:
        clip = spliced(clip, clips[1], config.splice_every or per_step)
    steps = [frame // per_step for frame in range(len(clip.frames))]

    rows, views = [], []
    for layer in layers:
        sources, grid = merges_after(merged, clip.pixels, settings, r, layer)
        views.append((sources, grid))
        rows.append(MergeRow(f"after layer {layer} (r={settings.r})", clip.frames, steps, owner_map(sources[0], grid)))
    duplication = None
    if config.duplicate_layer is not None:
        duplication = duplicate_layer(model, model_input(model, clip.pixels), config.duplicate_layer, config.times,
                                      settings)
        sources, grid = traced(model, duplication.sources)
        views.append((sources, grid))
        rows.append(MergeRow(f"layer {config.duplicate_layer} x {config.times}", clip.frames, steps,
                             owner_map(sources[0], grid)))
    videotome.patch(merged, settings, record_stats=True)
    forward(merged, clip.pixels)
    stats = videotome.layer_stats(merged)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    owners = rows[-1].owners
    tokens = {"shown": rows[-1].label, "settings": settings.to_dict(), "patches": int(owners.size),
              "dropped": int((owners < 0).sum()), "tokens": token_records(owners, steps)}
    if clip.from_donor is not None:
        sources, grid = views[-1]
        tokens["donor"] = str(donor_path)
        tokens["cross_clip_share"] = float(cross_clip_share(sources, grid, step_origins(clip.from_donor, per_step))[0])
    layer_file = {"settings": settings.to_dict(), "layers": stats}
    if duplication is not None:
        layer_file["duplication"] = {"layer": config.duplicate_layer, "times": config.times, "stats": duplication.stats}
    result = {
        "merges": plot_merges(rows, out / "merges.png"),
        "video": write_video(rows, out / "merges.mp4", frame_rate(config.video)),
        "tokens": out / "tokens.json",
        "layers": out / "layers.json",
        "layers_plot": plot_layers(stats, duplication.stats if duplication else None, out / "layers.png"),
        "settings": settings,
        "cross_clip_share": tokens.get("cross_clip_share"),
    }
    (out / "tokens.json").write_text(json.dumps(tokens) + "\n")
    (out / "layers.json").write_text(json.dumps(layer_file, indent=1) + "\n")
    return result
