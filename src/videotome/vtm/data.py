"""Datasets of frozen per-frame token features: LVU (ViS4mer's layout), Breakfast / COIN, and a synthetic task.

Feature files (written by ``videotome features extract``): ``{features}/{video_id}.safetensors`` holding
``tokens`` (frames, tokens per frame, channels) and optionally ``motion`` (frames, tokens per frame).

LVU, as ViS4mer reads it: ``{root}/{task}/{split}.csv`` for split in train / val / test, a header line, then
space-separated rows whose first fields are the label and whose second-to-last field is the YouTube id (the last
is the IMDb id). Classification labels are 0-based class indices. ``like_ratio`` rows start with likes and dislikes
(label like / (like + dislike) * 10 - 9.1382), ``view_count`` rows with the view count (label ln(views) - 11.7643).

Breakfast and COIN (our layout, no standard one exists for features): ``{root}/{split}.csv``, a header line, then
rows ``video_id label`` (0-based class index), separated by commas or spaces.

Every sample is a dict with ``tokens`` (frames, N, C), ``label`` and, when motion is used, ``motion`` (frames, N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor
from torch.utils.data import Dataset

LIKE_OFFSET = 9.1382
VIEW_OFFSET = 11.7643


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts: ``num_outputs`` classes (accuracy) or one regressed value (MSE)."""

    num_outputs: int
    regression: bool = False


LVU_TASKS = {
    "relationship": TaskSpec(4),
    "way_speaking": TaskSpec(5),
    "scene": TaskSpec(6),
    "director": TaskSpec(10),
    "genre": TaskSpec(4),
    "writer": TaskSpec(10),
    "year": TaskSpec(9),
    "like_ratio": TaskSpec(1, regression=True),
    "view_count": TaskSpec(1, regression=True),
}
SEGMENT_TASKS = {"breakfast": TaskSpec(10), "coin": TaskSpec(180)}
SPLITS = ("train", "val", "test")


def lvu_label(fields: list[str], task: str) -> float:
    """The training label of one LVU row, with ViS4mer's transforms for the two regressions."""
    if task == "like_ratio":
        like, dislike = float(fields[0]), float(fields[1])
        return like / (like + dislike) * 10.0 - LIKE_OFFSET
    if task == "view_count":
        return math.log(float(fields[0])) - VIEW_OFFSET
    label = int(fields[0])
    classes = LVU_TASKS[task].num_outputs
    if not 0 <= label < classes:
        raise ValueError(f"label {label} is outside 0..{classes - 1} for LVU task {task!r}")
    return float(label)


def read_lvu_csv(path: str | Path, task: str) -> list[tuple[str, float]]:
    """(video id, label) rows of an LVU split file."""
    if task not in LVU_TASKS:
        raise ValueError(f"task={task!r} is not an LVU task; expected one of {sorted(LVU_TASKS)}")
    rows = []
    lines = Path(path).read_text().splitlines()[1:]
    for number, line in enumerate(lines, start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 3:
            raise ValueError(f"{path}:{number}: expected 'label ... youtube_id imdb_id', got {line!r}")
        try:
            rows.append((fields[-2], lvu_label(fields, task)))
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from error
    return rows


def read_segment_csv(path: str | Path, num_classes: int) -> list[tuple[str, float]]:
    """(video id, class) rows of a Breakfast / COIN split file."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines()[1:], start=2):
        fields = line.replace(",", " ").split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise ValueError(f"{path}:{number}: expected 'video_id label', got {line!r}")
        label = int(fields[1])
        if not 0 <= label < num_classes:
            raise ValueError(f"{path}:{number}: label {label} is outside 0..{num_classes - 1}")
        rows.append((fields[0], float(label)))
    return rows


def load_features(path: Path, use_motion: bool) -> dict[str, Tensor]:
    """A video's tokens (float32) and, if asked, its motion (zeros when the file has none)."""
    data = load_file(str(path))
    if "tokens" not in data:
        raise ValueError(f"{path} has no 'tokens' tensor (found {sorted(data)})")
    sample = {"tokens": data["tokens"].float()}
    if use_motion:
        motion = data.get("motion")
        sample["motion"] = torch.zeros(sample["tokens"].shape[:2]) if motion is None else motion.float()
    return sample


def take_frames(sample: dict[str, Tensor], indices: Tensor) -> dict[str, Tensor]:
    """The given frames of every per-frame tensor of a sample."""
    return {key: value[indices] for key, value in sample.items()}


def window_indices(num_frames: int, start: int, length: int) -> Tensor:
    """Frames start .. start + length - 1, repeating the last frame where the video is too short."""
    return torch.arange(start, start + length).clamp(max=num_frames - 1)


def sliding_starts(num_frames: int, length: int, stride: int = 1) -> list[int]:
    """Start frames of every window of ``length`` frames ``stride`` apart (one window for short videos)."""
    return list(range(0, max(num_frames - length, 0) + 1, stride))


class FeatureVideos(Dataset):
    """Videos of a split from feature files: a random window of ``frames`` frames per video per epoch in training
    (``window`` sampling, LVU) or ``frames`` segments (``segments`` sampling, Breakfast / COIN: one random frame per
    equal segment in training, the middle one in evaluation). With ``whole=True`` evaluation returns every frame,
    for sliding-window evaluation."""

    def __init__(
        self,
        rows: list[tuple[str, float]],
        features: str | Path,
        *,
        frames: int,
        sampling: str = "window",
        train: bool = False,
        whole: bool = False,
        use_motion: bool = False,
        seed: int = 0,
    ) -> None:
        if sampling not in ("window", "segments"):
            raise ValueError(f"sampling={sampling!r} must be 'window' or 'segments'")
        self.features = Path(features)
        missing = [video for video, _ in rows if not (self.features / f"{video}.safetensors").exists()]
        if len(missing) == len(rows):
            raise FileNotFoundError(f"none of the {len(rows)} videos has a feature file in {self.features}")
        self.rows = [row for row in rows if row[0] not in set(missing)]
        self.missing = missing
        self.frames, self.sampling, self.train, self.whole = frames, sampling, train, whole
        self.use_motion, self.seed, self.epoch = use_motion, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a different window / segment frames in every epoch, reproducibly."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        video, label = self.rows[index]
        sample = load_features(self.features / f"{video}.safetensors", self.use_motion)
        if not self.whole:
            sample = take_frames(sample, self.frame_indices(sample["tokens"].shape[0], index))
        sample["label"] = torch.tensor(label)
        return sample

    def frame_indices(self, num_frames: int, index: int) -> Tensor:
        """Which frames form this sample."""
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.sampling == "window":
            start = int(rng.integers(0, max(num_frames - self.frames, 0) + 1)) if self.train else 0
            return window_indices(num_frames, start, self.frames)
        bounds = np.linspace(0, num_frames, self.frames + 1)
        offsets = rng.random(self.frames) if self.train else np.full(self.frames, 0.5)
        picks = np.floor(bounds[:-1] + offsets * (bounds[1:] - bounds[:-1])).astype(np.int64)
        return torch.from_numpy(np.clip(picks, 0, num_frames - 1))


class SyntheticSaliency(Dataset):
    """A long-video task where only a few salient tokens decide the label, hidden among many background ones.

    Each video has a few background prototypes (its "scene"); every token is a prototype plus isotropic noise.
    ``salient_per_video`` tokens at random places also carry ``signal`` times (a marker + their class's
    direction), both orthogonal to the prototypes. The added signal is weaker than the noise over all channels,
    so by cosine a salient token looks like any other token of its prototype and merging by similarity averages
    it into background tokens, while along the marker direction alone it stands out, which a learned linear
    saliency on the keys can pick up. ``salient`` (frames, N) marks the salient tokens, for diagnostics.
    """

    def __init__(
        self,
        num_videos: int,
        *,
        frames: int = 12,
        grid: int = 4,
        channels: int = 32,
        num_classes: int = 4,
        salient_per_video: int = 6,
        signal: float = 4.0,
        prototypes: int = 3,
        prototype_norm: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.num_videos, self.frames, self.grid, self.channels = num_videos, frames, grid, channels
        self.num_classes, self.salient_per_video, self.signal = num_classes, salient_per_video, signal
        self.prototypes, self.prototype_norm, self.seed = prototypes, prototype_norm, seed
        basis = torch.linalg.qr(torch.randn(channels, channels, generator=torch.Generator().manual_seed(1234)))[0]
        self.marker, self.class_directions = basis[:, 0], basis[:, 1 : 1 + num_classes].T
        self.background_basis = basis[:, 1 + num_classes :]

    def __len__(self) -> int:
        return self.num_videos

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        count = self.frames * self.grid * self.grid
        label = int(torch.randint(self.num_classes, (), generator=rng))
        coefficients = torch.randn(self.prototypes, self.background_basis.shape[1], generator=rng)
        scene = coefficients @ self.background_basis.T
        scene = scene / scene.norm(dim=1, keepdim=True) * self.prototype_norm * math.sqrt(self.channels)
        tokens = scene[torch.randint(self.prototypes, (count,), generator=rng)]
        tokens = tokens + torch.randn(count, self.channels, generator=rng)
        salient = torch.randperm(count, generator=rng)[: self.salient_per_video]
        tokens[salient] += self.signal * (self.marker + self.class_directions[label])
        is_salient = torch.zeros(count, dtype=torch.bool)
        is_salient[salient] = True
        return {
            "tokens": tokens.reshape(self.frames, self.grid * self.grid, self.channels),
            "label": torch.tensor(float(label)),
            "salient": is_salient.reshape(self.frames, self.grid * self.grid),
        }
