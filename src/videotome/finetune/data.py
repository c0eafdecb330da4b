"""The video datasets of fine-tuning: the harness's decoding and preprocessing, plus training augmentation.

Training clips get a random temporal offset, a random short-side scale and a random crop, and a horizontal flip
unless direction is the label; validation clips are read exactly as ``videotome eval`` reads them. Every random
draw comes from the clip's index, the epoch and the seed, never from a global generator, so a run is the same in
one process or many, with any number of workers, and after a resume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from ..evaluation.datasets import Sample
from ..evaluation.video import (
    DecodeError,
    Preprocessing,
    SamplingConfig,
    normalize,
    read_clip,
    read_input,
)

#: the short side is scaled to this range of multiples of the crop side before the random crop (PySlowFast's
#: TRAIN_JITTER_SCALES [256, 320] for a 224 crop)
SCALE_RANGE = (256 / 224, 320 / 224)
#: the label of a clip that failed to decode in validation: left out of the metrics and counted as failed
FAILED = -1


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation: random temporal offset, short-side scale in ``scale`` (multiples of the crop side),
    random crop, and a horizontal flip with probability one half when ``flip``."""

    flip: bool
    scale: tuple[float, float] = SCALE_RANGE


def crop_side(preprocessing: Preprocessing, image_size: int) -> tuple[int, int]:
    """The (height, width) the model takes: the processor's crop, else its resize, else the config's image size."""
    return preprocessing.crop or preprocessing.resize_to or (image_size, image_size)


def augment(frames: np.ndarray, crop: tuple[int, int], augmentation: Augmentation, rng: np.random.Generator,
            preprocessing: Preprocessing) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 frames to the model's ``(T, 3, h, w)`` input: scaled, randomly cropped, maybe
    flipped, then normalised as evaluation does."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    height, width = video.shape[-2:]
    short = rng.uniform(*augmentation.scale) * max(crop)
    factor = short / min(height, width)
    size = (max(crop[0], round(height * factor)), max(crop[1], round(width * factor)))
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False, antialias=True)
    top = int(rng.integers(0, size[0] - crop[0] + 1))
    left = int(rng.integers(0, size[1] - crop[1] + 1))
    video = video[..., top : top + crop[0], left : left + crop[1]]
    if augmentation.flip and rng.random() < 0.5:
        video = video.flip(-1)
    return normalize(video, preprocessing).contiguous()


class VideoClips(Dataset):
    """Labelled clips as ``{"pixel_values", "labels", "skipped"}``: ``labels`` holds one class index per head (in
    ``heads`` order).

    With ``augmentation`` (training), an item's key is ``epoch * len(self) + index`` (:class:`EpochSampler`), and a
    clip that cannot be decoded is replaced by the next one that can, ``skipped`` counting those passed over. Without
    (validation), clips are read as ``videotome eval`` reads them and a failed one gets :data:`FAILED` labels.
    """

    def __init__(self, samples: list[Sample], heads: list[str], sampling: SamplingConfig,
                 preprocessing: Preprocessing, crop: tuple[int, int], *, decoder: str = "pyav",
                 augmentation: Augmentation | None = None, seed: int = 0) -> None:
        self.samples, self.heads, self.sampling = samples, heads, sampling
        self.preprocessing, self.crop, self.decoder = preprocessing, crop, decoder
        self.augmentation, self.seed = augmentation, seed

    def __len__(self) -> int:
        return len(self.samples)

    def _labels(self, sample: Sample) -> torch.Tensor:
        return torch.tensor([sample.labels[head] for head in self.heads])

    def __getitem__(self, key: int) -> dict[str, Any]:
        epoch, index = divmod(int(key), len(self))
        if self.augmentation is None:
            sample = self.samples[index]
            try:
                _, pixels = read_input(sample.path, self.sampling, self.preprocessing, sample.start, sample.end,
                                       self.decoder)
                labels = self._labels(sample)
            except DecodeError:
                pixels = torch.zeros(self.sampling.frames, 3, *self.crop)
                labels = torch.full((len(self.heads),), FAILED)
            return {"pixel_values": pixels, "labels": labels, "skipped": 0}
        for skipped in range(len(self)):
            sample = self.samples[(index + skipped) % len(self)]
            rng = np.random.default_rng((self.seed, epoch, (index + skipped) % len(self)))
            try:
                frames = read_clip(sample.path, self.sampling, sample.start, sample.end, self.decoder,
                                   position=float(rng.random()))
            except DecodeError:
                continue
            pixels = augment(frames, self.crop, self.augmentation, rng, self.preprocessing)
            return {"pixel_values": pixels, "labels": self._labels(sample), "skipped": skipped}
        raise DecodeError(f"none of the {len(self)} training videos could be decoded (the first: "
                          f"{self.samples[0].path})")


class EpochSampler(Sampler[int]):
    """A shuffled order of the clips for each epoch, seeded by the epoch (the Trainer calls :meth:`set_epoch`),
    yielding keys that tell :class:`VideoClips` the epoch too."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next ``__iter__``'s order for ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from (self.epoch * self.size + int(i) for i in torch.randperm(self.size, generator=generator))


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack clips and labels; sum the skipped counts."""
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        "labels": torch.stack([item["labels"] for item in items]),
        "skipped": torch.tensor(sum(item["skipped"] for item in items)),
    }

