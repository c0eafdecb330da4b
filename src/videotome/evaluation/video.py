"""Video decoding, frame sampling and preprocessing for evaluation.

One view per clip, as in the paper: ``dense`` sampling takes ``frames`` frames ``stride`` apart from the centre of the
clip, ``uniform`` sampling takes the middle frame of ``frames`` equal segments. Clips shorter than needed repeat their
last frame. Pixels go through the checkpoint's own ``preprocessor_config.json`` when it has one (resize of the short
side, centre crop, rescale, normalise), else the model family's defaults.
"""

from __future__ import annotations

import importlib.util
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VideotomeError
from ..loading import stored_settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the suffixes of the video files the commands look for (containers PyAV decodes), matched in any case
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
HALF = (0.5, 0.5, 0.5)
SAMPLING_MODES = ("uniform", "dense")
DECODERS = ("pyav", "decord")


class DecodeError(VideotomeError, RuntimeError):
    """A video that is missing, truncated or cannot be decoded."""


@dataclass(frozen=True)
class FamilyDefaults:
    """Frame sampling and normalisation a model family was trained with."""

    frames: int
    sampling: str
    stride: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


FAMILY_DEFAULTS = {
    "videomae": FamilyDefaults(16, "dense", 4, IMAGENET_MEAN, IMAGENET_STD),
    "vivit": FamilyDefaults(32, "dense", 2, HALF, HALF),
    "timesformer": FamilyDefaults(8, "uniform", 1, IMAGENET_MEAN, IMAGENET_STD),
    "motionformer": FamilyDefaults(16, "dense", 4, HALF, HALF),  # the official configs' DATA.MEAN/STD
    # image backbones run frame by frame (the frames are a batch of images), normalised as their processors do
    "vit": FamilyDefaults(8, "uniform", 1, HALF, HALF),
    "dinov2": FamilyDefaults(8, "uniform", 1, IMAGENET_MEAN, IMAGENET_STD),
}


def family_defaults(model_type: str) -> FamilyDefaults:
    """Return the sampling and normalisation defaults of a model family (``config.model_type``)."""
    if model_type not in FAMILY_DEFAULTS:
        raise ValueError(f"unknown model family {model_type!r}; expected one of {sorted(FAMILY_DEFAULTS)}")
    return FAMILY_DEFAULTS[model_type]


@dataclass(frozen=True)
class SamplingConfig:
    """How many frames to take from a clip, and how."""

    frames: int
    sampling: str = "dense"
    stride: int = 1

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be at least 1, got {self.frames}")
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {self.sampling!r}")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")


def model_sampling(
    config: Any, frames: int | None = None, sampling: str | None = None, stride: int | None = None
) -> SamplingConfig:
    """A model's frame sampling: the values given (flags), else those its config stores, else its ``num_frames``
    and its family's defaults."""
    stored = stored_settings(config).get("sampling", {})
    defaults = family_defaults(config.model_type)
    return SamplingConfig(
        frames=frames or stored.get("frames") or getattr(config, "num_frames", None) or defaults.frames,
        sampling=sampling or stored.get("sampling") or defaults.sampling,
        stride=stride or stored.get("stride") or defaults.stride,
    )


def sample_indices(num_frames: int, config: SamplingConfig, position: float = 0.5) -> list[int]:
    """Return the frame indices of the single view taken from a clip of ``num_frames`` frames: ``position`` in
    [0, 1) places it (dense: the window's start over the frames it may start at; uniform: the frame taken in each
    segment); 0.5, the centre, is evaluation's view, a random one training's temporal offset."""
    if num_frames < 1:
        raise ValueError(f"cannot sample from a clip with {num_frames} frames")
    if config.sampling == "uniform":
        if num_frames < config.frames:
            indices = list(range(num_frames))
        else:
            segment = num_frames / config.frames
            indices = [int((i + position) * segment) for i in range(config.frames)]
    else:
        span = (config.frames - 1) * config.stride + 1
        start = max(0, int(position * (num_frames - span)))
        indices = [i for i in range(start, start + span, config.stride) if i < num_frames]
    return indices + [indices[-1]] * (config.frames - len(indices))


@dataclass(frozen=True)
class Preprocessing:
    """Pixel pipeline: resize, centre crop, rescale and normalise (the Hugging Face processor's semantics)."""

    shortest_edge: int | None
    resize_to: tuple[int, int] | None
    crop: tuple[int, int] | None
    rescale_factor: float
    offset: bool
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as plain JSON values."""
        return asdict(self)


def _pair(value: Any, what: str) -> tuple[int, int]:
    """Read a (height, width) pair from a processor config value (dict or int)."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "height" in value and "width" in value:
        return int(value["height"]), int(value["width"])
    raise ValueError(f"{what} must be an integer or {{height, width}}, got {value!r}")


def preprocessing_from_dict(processor: dict[str, Any], model_type: str | None, image_size: int) -> Preprocessing:
    """Build the pixel pipeline from a ``preprocessor_config.json`` dict (missing keys: the family's defaults;
    ``model_type`` None for a dict that needs none, one without normalisation or with its mean and std)."""
    shortest_edge, resize_to = None, None
    if processor.get("do_resize", True):
        size = processor.get("size", image_size)
        if isinstance(size, dict) and "shortest_edge" in size:
            shortest_edge = int(size["shortest_edge"])
        else:
            resize_to = _pair(size, "size")
    crop = _pair(processor.get("crop_size", image_size), "crop_size") if processor.get("do_center_crop", True) else None
    do_rescale = processor.get("do_rescale", True)
    do_normalize = processor.get("do_normalize", True)
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if do_normalize and (mean is None or std is None):
        if model_type is None:
            raise ValueError(f"a preprocessor config that normalises needs image_mean and image_std, got {processor}")
        defaults = family_defaults(model_type)
        mean, std = mean or defaults.mean, std or defaults.std
    return Preprocessing(
        shortest_edge=shortest_edge,
        resize_to=resize_to,
        crop=crop,
        rescale_factor=float(processor.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
        offset=bool(processor.get("offset", False)) and do_rescale,
        mean=tuple(mean) if do_normalize else None,
        std=tuple(std) if do_normalize else None,
    )


def load_preprocessing(model_dir: str | Path, model_type: str, image_size: int) -> Preprocessing:
    """Read ``preprocessor_config.json`` from a checkpoint directory, or use the family defaults without one."""
    path = Path(model_dir) / "preprocessor_config.json"
    processor = json.loads(path.read_text()) if path.is_file() else {"size": {"shortest_edge": image_size}}
    return preprocessing_from_dict(processor, model_type, image_size)


def preprocess(frames: np.ndarray, pipeline: Preprocessing) -> torch.Tensor:
    """Turn ``(T, H, W, 3)`` uint8 frames into the model's ``(T, 3, h, w)`` float input."""
    return normalize(resize_and_crop(frames, pipeline), pipeline).contiguous()


def resize_and_crop(frames: np.ndarray, pipeline: Preprocessing) -> torch.Tensor:
    """The geometry of :func:`preprocess`: ``(T, H, W, 3)`` uint8 frames resized and cropped to the model's
    ``(T, 3, h, w)``, still float pixel values (0-255): the frames the model sees, before normalisation."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    height, width = video.shape[-2:]
    if pipeline.shortest_edge is not None:
        short, long = sorted((height, width))
        scaled_long = int(pipeline.shortest_edge * long / short)
        size = (pipeline.shortest_edge, scaled_long) if height <= width else (scaled_long, pipeline.shortest_edge)
    else:
        size = pipeline.resize_to
    if size is not None and size != (height, width):
        video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    if pipeline.crop is not None:
        video = center_crop(video, pipeline.crop)
    return video


def normalize(video: torch.Tensor, pipeline: Preprocessing) -> torch.Tensor:
    """Rescale (with the offset) and normalise float ``(..., 3, H, W)`` pixels: the arithmetic of :func:`preprocess`
    after resize and crop, for clips already in memory."""
    video = video * pipeline.rescale_factor - (1.0 if pipeline.offset else 0.0)
    if pipeline.mean is not None and pipeline.std is not None:
        mean = torch.tensor(pipeline.mean).view(-1, 1, 1)
        std = torch.tensor(pipeline.std).view(-1, 1, 1)
        video = (video - mean) / std
    return video


def center_crop(video: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``(height, width)`` of ``(..., H, W)``, padding with zeros where the video is smaller."""
    crop_h, crop_w = crop
    height, width = video.shape[-2:]
    pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
    if pad_h or pad_w:
        video = F.pad(video, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = video.shape[-2:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    return video[..., top : top + crop_h, left : left + crop_w]


def check_decoder(decoder: str) -> None:
    """Fail before any work when the decoder is unknown, or is decord and decord is not installed."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    if decoder == "decord" and importlib.util.find_spec("decord") is None:
        raise ValueError("--decoder decord needs the decord package; install it or use --decoder pyav")


def read_clip(
    path: str | Path,
    config: SamplingConfig,
    start: float | None = None,
    end: float | None = None,
    decoder: str = "pyav",
    position: float = 0.5,
) -> np.ndarray:
    """Decode the sampled frames of a video (or of its ``[start, end)`` seconds) as ``(T, H, W, 3)`` uint8, the view
    at ``position`` (:func:`sample_indices`).

    Raises ``DecodeError`` for a missing, truncated or undecodable file.
    """
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"missing video: {path}")
    check_decoder(decoder)
    if decoder == "decord":
        return _read_clip_decord(path, config, start, end, position)
    return _read_clip_pyav(path, config, start, end, position)


def read_input(
    path: str | Path,
    config: SamplingConfig,
    pipeline: Preprocessing,
    start: float | None = None,
    end: float | None = None,
    decoder: str = "pyav",
) -> tuple[np.ndarray, torch.Tensor]:
    """A video as ``videotome eval`` feeds it: the sampled frames as the model sees them, ``(T, h, w, 3)`` uint8
    (resized and cropped), and the model's ``(T, 3, h, w)`` input (:func:`read_clip`, then :func:`preprocess`)."""
    seen = resize_and_crop(read_clip(path, config, start, end, decoder), pipeline)
    shown = seen.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return shown, normalize(seen, pipeline).contiguous()


def frame_rate(path: str | Path) -> float:
    """Frames per second of a video's first video stream (25 when the container does not say)."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"no video stream in {path}")
            return float(container.streams.video[0].average_rate or 25)
    except (av.error.FFmpegError, OSError) as error:
        raise DecodeError(f"cannot decode {path}: {error}") from error


def _read_clip_pyav(
    path: Path, config: SamplingConfig, start: float | None, end: float | None, position: float
) -> np.ndarray:
    """Decode with PyAV: count the frames by demuxing (cheap), then decode and keep only the sampled ones."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            base = float(stream.time_base)
            lower = -math.inf if start is None else start
            upper = math.inf if end is None else end

            def in_range(pts: int | None) -> bool:
                return pts is not None and lower <= pts * base < upper

            def rewind() -> None:
                if start is None:
                    container.seek(0, stream=stream)
                else:
                    container.seek(int(start / base), stream=stream, backward=True, any_frame=False)

            rewind()
            times = sorted(p.pts for p in container.demux(stream) if p.size and in_range(p.pts))
            if not times:
                raise DecodeError(f"no frames in {path}" + ("" if start is None else f" between {start}s and {end}s"))
            _check_complete(path, stream, times[-1] * base, upper)
            wanted = sample_indices(len(times), config, position)
            keep = {times[i] for i in wanted}
            rewind()
            decoded: dict[int, np.ndarray] = {}
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts * base >= upper:
                    break
                if frame.pts in keep:
                    decoded[frame.pts] = frame.to_ndarray(format="rgb24")
    except DecodeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise DecodeError(f"cannot decode {path}: {error}") from error
    if not decoded:
        raise DecodeError(f"no frame of {path} could be decoded")
    missing = [times[i] for i in wanted if times[i] not in decoded]
    if missing:
        raise DecodeError(f"truncated video {path}: {len(missing)} of the sampled frames could not be decoded")
    return np.stack([decoded[times[i]] for i in wanted])


def _check_complete(path: Path, stream: Any, last_frame: float, upper: float) -> None:
    """Refuse a file whose packets stop well before the duration its header declares (a cut-off download)."""
    if not stream.duration:
        return
    base = float(stream.time_base)
    declared_end = ((stream.start_time or 0) + stream.duration) * base
    rate = float(stream.average_rate or 25)
    expected = min(upper, declared_end)
    if last_frame < expected - (3 / rate + 0.02 * expected):  # a well-formed file ends one frame before
        raise DecodeError(
            f"truncated video {path}: frames stop at {last_frame:.2f}s, the header declares {declared_end:.2f}s"
        )


def _read_clip_decord(
    path: Path, config: SamplingConfig, start: float | None, end: float | None, position: float
) -> np.ndarray:
    """Decode with decord (only when installed and asked for)."""
    import decord

    try:
        reader = decord.VideoReader(str(path))
        fps = reader.get_avg_fps()
        first = 0 if start is None else max(0, math.ceil(start * fps - 1e-6))
        stop = len(reader) if end is None else min(len(reader), math.ceil(end * fps - 1e-6))
        if stop <= first:
            raise DecodeError(f"no frames in {path} between {start}s and {end}s")
        wanted = [first + i for i in sample_indices(stop - first, config, position)]
        return reader.get_batch(wanted).asnumpy()
    except DecodeError:
        raise
    except Exception as error:  # decord raises its own DECORDError and plain RuntimeErrors
        raise DecodeError(f"cannot decode {path}: {error}") from error
