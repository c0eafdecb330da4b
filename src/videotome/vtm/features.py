"""Frozen per-frame token features of a Hugging Face image backbone, with codec motion magnitudes.

For each video, frames are taken at ``fps`` (the first decoded frame at or after each multiple of 1/fps seconds),
resized to ``image_size`` x ``image_size`` (no crop) and normalised with the checkpoint's ``image_mean`` /
``image_std`` (from its ``preprocessor_config.json``, else ImageNet's); backbones that can interpolate their
position embeddings (ViT) are asked to, so any multiple of the patch size works. The backbone's last hidden
state, class token (and any register tokens) included, is stored per frame.

Motion: the decoder exports the codec's motion vectors (``flags2=+export_mvs``). Each vector moves a w x h block;
its magnitude sqrt(dx^2 + dy^2) (in pixels of the original frame) is weighted by the block's area and added to the
patch that contains the block's centre, then divided by the patch's area, so a patch's value is the mean motion over
its area (blocks without vectors, such as intra-coded ones and all of a key frame, count as still). A sampled
frame's motion is the mean over the decoded frames since the previous sample (key frames included, so motion is
lower around them). Tokens without a position (class, registers) get the frame's mean patch motion.

The backbone is a local directory or a Hugging Face Hub id already in the local cache: nothing is downloaded.

Output: ``{out}/{video stem}.safetensors`` with ``tokens`` (frames, tokens, channels) and ``motion`` (frames,
tokens). Finished files are skipped, so an interrupted run resumes; a video that fails is skipped and listed in
``{out}/failed.tsv`` (one line per video: name, tab, error), rewritten after each change: a rerun replaces the
lines of the videos it retries, drops those now done and keeps those of videos it does not see.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor
from tqdm import tqdm

from videotome.errors import VideotomeError
from videotome.evaluation.video import IMAGENET_MEAN, IMAGENET_STD, VIDEO_EXTENSIONS
from videotome.loading import quiet_loading

FAILED_LIST = "failed.tsv"


def backbone_directory(name: str) -> Path:
    """The directory of backbone ``name``: itself, or a Hub id's snapshot in the local Hugging Face cache."""
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a Hub id either (HFValidationError)
        config = None
    if not isinstance(config, str):
        raise FileNotFoundError(
            f"--backbone {name!r} is neither a model directory nor a model in the local Hugging Face cache "
            "(nothing is downloaded)"
        )
    return Path(config).parent


def load_backbone(name: str) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...], int]:
    """The backbone in eval mode, its normalisation mean and std, and its patch size.

    ``name`` is a local directory or a cached Hub id (see :func:`backbone_directory`), loaded with
    ``local_files_only=True``.
    """
    from transformers import AutoModel

    directory = backbone_directory(name)
    try:
        with quiet_loading():
            model = AutoModel.from_pretrained(directory, local_files_only=True).eval()
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise VideotomeError(f"--backbone {name!r} does not load from {directory}: {reason}") from None
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    processor = directory / "preprocessor_config.json"
    if processor.exists():
        settings = json.loads(processor.read_text())
        mean = tuple(settings.get("image_mean", mean))
        std = tuple(settings.get("image_std", std))
    patch = getattr(model.config, "patch_size", None)
    if not isinstance(patch, int):
        raise ValueError(f"backbone {name!r} has patch_size={patch!r}; expected a ViT-like model with an int patch")
    return model, mean, std, patch


def block_motion_to_patches(vectors: np.ndarray, frame_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Mean motion magnitude per patch (grid_h, grid_w) from one frame's motion vectors (PyAV's structured array)."""
    width, height = frame_size
    grid_h, grid_w = grid
    total = np.zeros(grid_h * grid_w)
    if vectors is None or len(vectors) == 0:
        return total.reshape(grid_h, grid_w)
    scale = np.maximum(vectors["motion_scale"].astype(np.float64), 1.0)
    magnitude = np.hypot(vectors["motion_x"], vectors["motion_y"]) / scale
    area = vectors["w"].astype(np.float64) * vectors["h"].astype(np.float64)
    col = np.clip((vectors["dst_x"].astype(np.float64) / width * grid_w).astype(np.int64), 0, grid_w - 1)
    row = np.clip((vectors["dst_y"].astype(np.float64) / height * grid_h).astype(np.int64), 0, grid_h - 1)
    np.add.at(total, row * grid_w + col, magnitude * area)
    patch_area = (width / grid_w) * (height / grid_h)
    return (total / patch_area).reshape(grid_h, grid_w)


def sample_frames(
    path: Path, fps: float, grid: tuple[int, int], max_frames: int | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (RGB frame (H, W, 3) uint8, patch motion (grid_h, grid_w)) at ``fps`` frames per second."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        rate = float(stream.average_rate or 25)
        next_time, taken = 0.0, 0
        motion_sum, motion_frames = None, 0
        for index, frame in enumerate(container.decode(stream)):
            vectors = frame.side_data.get("MOTION_VECTORS")
            patches = block_motion_to_patches(
                None if vectors is None else vectors.to_ndarray(), (frame.width, frame.height), grid
            )
            motion_sum = patches if motion_sum is None else motion_sum + patches
            motion_frames += 1
            time = frame.time if frame.time is not None else index / rate
            if time + 1e-6 < next_time:
                continue
            yield frame.to_ndarray(format="rgb24"), motion_sum / motion_frames
            motion_sum, motion_frames = None, 0
            taken += 1
            next_time = taken / fps
            if max_frames is not None and taken >= max_frames:
                return


def preprocess(frames: list[np.ndarray], image_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """(F, 3, S, S) float pixels: resized, scaled to [0, 1], normalised."""
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@torch.no_grad()
def extract_video(
    path: Path,
    model: torch.nn.Module,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    patch: int,
    *,
    fps: float = 1.0,
    image_size: int = 224,
    batch_size: int = 16,
    max_frames: int | None = None,
) -> dict[str, Tensor]:
    """``tokens`` (frames, tokens, channels) and ``motion`` (frames, tokens) of one video."""
    if image_size % patch:
        raise ValueError(f"image_size={image_size} is not a multiple of the backbone's patch size {patch}")
    grid = (image_size // patch, image_size // patch)
    frames, motions = [], []
    for rgb, motion in sample_frames(path, fps, grid, max_frames):
        frames.append(rgb)
        motions.append(motion)
    if not frames:
        raise ValueError(f"{path} has no decodable video frame")
    options = {}
    if "interpolate_pos_encoding" in inspect.signature(model.forward).parameters:
        options["interpolate_pos_encoding"] = True
    tokens = []
    for start in range(0, len(frames), batch_size):
        pixels = preprocess(frames[start : start + batch_size], image_size, mean, std)
        tokens.append(model(pixel_values=pixels, **options).last_hidden_state.float())
    tokens = torch.cat(tokens)
    patch_motion = torch.from_numpy(np.stack(motions)).float().flatten(1)
    prefix = tokens.shape[1] - patch_motion.shape[1]
    if prefix < 0:
        raise ValueError(f"backbone returned {tokens.shape[1]} tokens for a {grid[0]}x{grid[1]} patch grid")
    prefix_motion = patch_motion.mean(dim=1, keepdim=True).expand(-1, prefix)
    return {"tokens": tokens, "motion": torch.cat([prefix_motion, patch_motion], dim=1)}


def list_videos(directory: Path) -> list[Path]:
    """Video files directly in ``directory``, sorted."""
    if not directory.is_dir():
        raise FileNotFoundError(f"--videos {directory} is not a directory")
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)


def extract_directory(
    backbone: str,
    videos: str | Path,
    out: str | Path,
    *,
    fps: float = 1.0,
    image_size: int = 224,
    batch_size: int = 16,
    max_frames: int | None = None,
    dtype: torch.dtype = torch.float16,
) -> tuple[int, int, int]:
    """Extract every video of ``videos`` into ``out``; returns (written, skipped as finished, failed).

    The arguments (fps, the video folder, the backbone) are checked before anything is written.
    """
    videos, out = Path(videos), Path(out)
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"--fps {fps} must be a positive number")
    paths = list_videos(videos)
    model, mean, std, patch = load_backbone(backbone)
    out.mkdir(parents=True, exist_ok=True)
    failures = read_failures(out / FAILED_LIST)
    written = skipped = failed = 0
    for path in tqdm(paths, desc="features", unit="video"):
        target = out / f"{path.stem}.safetensors"
        if target.exists():
            skipped += 1
            record_failure(out / FAILED_LIST, failures, path.name, None)
            continue
        try:
            result = extract_video(
                path, model, mean, std, patch, fps=fps, image_size=image_size, batch_size=batch_size,
                max_frames=max_frames,
            )
        except (av.FFmpegError, ValueError, OSError) as error:
            record_failure(out / FAILED_LIST, failures, path.name, error)
            failed += 1
            continue
        partial = target.with_suffix(".partial")
        metadata = {"backbone": backbone, "fps": str(fps), "image_size": str(image_size)}
        save_file({"tokens": result["tokens"].to(dtype), "motion": result["motion"]}, str(partial), metadata)
        partial.rename(target)
        record_failure(out / FAILED_LIST, failures, path.name, None)
        written += 1
    return written, skipped, failed


def read_failures(path: Path) -> dict[str, str]:
    """Video name -> error of an earlier run's ``failed.tsv`` (empty when there is none)."""
    if not path.exists():
        return {}
    rows = (line.partition("\t") for line in path.read_text().splitlines() if line.strip())
    return {name: error for name, _, error in rows}


def record_failure(path: Path, failures: dict[str, str], name: str, error: Exception | None) -> None:
    """Set (or with ``error`` None clear) the failure of video ``name`` and rewrite ``path`` atomically; the file
    is removed once no failure is left."""
    if error is not None:
        failures[name] = " ".join(f"{type(error).__name__}: {error}".split())
    elif failures.pop(name, None) is None:
        return
    if not failures:
        path.unlink(missing_ok=True)
        return
    partial = path.with_suffix(".partial")
    partial.write_text("".join(f"{video}\t{reason}\n" for video, reason in failures.items()))
    partial.replace(path)
