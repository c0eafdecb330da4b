"""The testbed dataset: handwritten digits moving over panning photographs, labelled like EPIC-KITCHENS-100.

Every clip shows one digit from scikit-learn's ``load_digits`` (the noun: spatial, readable from any single frame)
moving in one of eight ways (the verb: left, right, up, down, zoom in, zoom out, rotate clockwise, rotate
anticlockwise; only readable from the order of the frames) over a slowly panning crop of one of scikit-learn's
``load_sample_images`` photographs, with pixel noise. An action is a (verb, noun) pair.

Generation is deterministic from a seed. The train and validation splits draw from disjoint sets of digit images
(a fixed 80/20 partition of the 1797 digits), so validation accuracy measures recognition of unseen handwriting.
Each clip records its sprite's track (centre x, centre y, scale, angle per frame) so the motion can be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ..evaluation.video import normalize, preprocessing_from_dict

VERBS = ("left", "right", "up", "down", "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw")
NOUNS = tuple(str(digit) for digit in range(10))
HEADS = {"verb": len(VERBS), "noun": len(NOUNS)}
SPLITS = ("train", "val")
VALIDATION_SHARE = 0.2
SPLIT_SEED = 0
#: the validation clips every checkpoint is scored on (the demo evaluates a prefix of them)
VALIDATION_SEED = 1234
VALIDATION_SIZE = 1024
PHOTO_DOWNSCALE = 4
SPRITE_SIDE = 8  # load_digits images are 8x8
#: every checkpoint's ``preprocessor_config.json``: uint8 pixels to [-1, 1] (x / 127.5 - 1), no resize or crop
PREPROCESSOR_CONFIG = {
    "do_resize": False,
    "do_center_crop": False,
    "do_rescale": True,
    "rescale_factor": 1 / 127.5,
    "offset": True,
    "do_normalize": False,
}


@dataclass(frozen=True)
class ClipSpec:
    """The shape of a clip: ``frames`` frames of ``size`` x ``size`` RGB pixels."""

    frames: int = 16
    size: int = 32

    def __post_init__(self) -> None:
        if self.frames < 2 or self.size < 16:
            raise ValueError(f"clips need at least 2 frames of at least 16x16 pixels, got {self.frames}x{self.size}")


@dataclass
class Clips:
    """A batch of generated clips.

    ``video``: (N, frames, 3, size, size) uint8. ``verb``, ``noun``: (N,) int64 labels. ``digit_index``: (N,) index
    of the digit image in ``load_digits``. ``track``: (N, frames, 4) float32 sprite centre x and y (pixels, x to the
    right, y down), scale (screen pixels per digit pixel) and angle (degrees, anticlockwise on screen positive).
    """

    video: torch.Tensor
    verb: torch.Tensor
    noun: torch.Tensor
    digit_index: torch.Tensor
    track: torch.Tensor

    def __len__(self) -> int:
        return int(self.verb.shape[0])

    def pixels(self) -> torch.Tensor:
        """The clips as model input: float32 in [-1, 1], computed as ``videotome eval`` computes it from the video
        files with the checkpoints' ``PREPROCESSOR_CONFIG``."""
        return normalize(self.video.float(), preprocessing_from_dict(PREPROCESSOR_CONFIG, None, self.video.shape[-1]))

    def take(self, index: slice | torch.Tensor) -> Clips:
        """The clips at ``index`` (a slice or a tensor of positions), every field alike."""
        return Clips(*(getattr(self, name)[index] for name in ("video", "verb", "noun", "digit_index", "track")))

    def head(self, count: int) -> Clips:
        """The first ``count`` clips."""
        return self.take(slice(count))

    def labels(self) -> torch.Tensor:
        """(N, 2) verb and noun labels."""
        return torch.stack((self.verb, self.noun), dim=1)


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, np.ndarray]:
    """The 1797 digit images as (N, 1, 8, 8) float in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return torch.from_numpy(digits.images / 16.0).float().unsqueeze(1), digits.target.astype(np.int64)


@lru_cache(maxsize=1)
def _photos() -> tuple[torch.Tensor, ...]:
    """The sample photographs, downscaled so a clip shows a small crop, as (1, 3, h, w) float in [0, 1]."""
    from sklearn.datasets import load_sample_images

    photos = []
    for image in load_sample_images().images:
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
        height, width = tensor.shape[-2:]
        size = (height // PHOTO_DOWNSCALE, width // PHOTO_DOWNSCALE)
        photos.append(F.interpolate(tensor, size=size, mode="area"))
    return tuple(photos)


def split_indices(split: str) -> np.ndarray:
    """Indices of the digit images of a split; the two splits are disjoint and always the same."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, targets = _digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(targets))
    cut = int(round(len(targets) * VALIDATION_SHARE))
    return np.sort(order[:cut] if split == "val" else order[cut:])


def _tracks(rng: np.random.Generator, verbs: np.ndarray, spec: ClipSpec) -> np.ndarray:
    """Per-frame (x, y, scale, angle) of each clip's sprite, following its verb."""
    count, frames, size = len(verbs), spec.frames, spec.size
    progress = np.linspace(0.0, 1.0, frames)[None, :]  # (1, T)
    unit = size / 32.0  # motions are designed at 32 pixels and scale with the clip
    centre = size / 2 + rng.uniform(-2.5, 2.5, (count, 2)) * unit
    scale = rng.uniform(1.7, 2.1, count) * unit
    angle = rng.uniform(-10.0, 10.0, count)
    distance = rng.uniform(10.0, 14.0, count) * unit
    turn = rng.uniform(90.0, 120.0, count)
    zoom = rng.uniform(1.5, 1.8, count)

    x = np.repeat(centre[:, :1], frames, axis=1)
    y = np.repeat(centre[:, 1:], frames, axis=1)
    s = np.repeat(scale[:, None], frames, axis=1)
    a = np.repeat(angle[:, None], frames, axis=1)
    sweep = (progress - 0.5) * distance[:, None]  # centred, so the sprite stays in the frame
    for verb, (axis, sign) in {0: (x, -1), 1: (x, 1), 2: (y, -1), 3: (y, 1)}.items():
        rows = verbs == verb
        axis[rows] += sign * sweep[rows]
    growth = np.exp((progress - 0.5) * np.log(zoom)[:, None])  # geometric: zoom looks uniform
    for verb, power in ((4, 1), (5, -1)):
        rows = verbs == verb
        s[rows] = scale[rows, None] * growth[rows] ** power
    for verb, sign in ((6, -1), (7, 1)):
        rows = verbs == verb
        a[rows] = angle[rows, None] + sign * (progress - 0.5) * turn[rows, None]
    return np.stack((x, y, s, a), axis=-1).astype(np.float32)


def _canvas_grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates of a size x size canvas, each (size, size)."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    v, u = torch.meshgrid(centres, centres, indexing="ij")
    return u, v


def _render_sprites(sprites: torch.Tensor, track: torch.Tensor, size: int) -> torch.Tensor:
    """Alpha maps (N, T, size, size) of each sprite placed by its track (inverse mapping + bilinear sampling)."""
    count, frames = track.shape[:2]
    u, v = _canvas_grid(size)
    x, y, scale, angle = (track[..., k, None, None] for k in range(4))
    theta = torch.deg2rad(angle)
    dx, dy = (u - x) / scale, (v - y) / scale
    # screen y points down, so an anticlockwise turn by theta maps the sprite offset (p, q) to
    # (p cos + q sin, -p sin + q cos); this is its inverse
    p = dx * torch.cos(theta) - dy * torch.sin(theta)
    q = dx * torch.sin(theta) + dy * torch.cos(theta)
    grid = torch.stack((p, q), dim=-1) / (SPRITE_SIDE / 2)  # normalised sprite coordinates
    grid = grid.reshape(count, frames * size, size, 2)
    alpha = F.grid_sample(sprites, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return alpha.reshape(count, frames, size, size)


def _render_backgrounds(rng: np.random.Generator, count: int, spec: ClipSpec) -> torch.Tensor:
    """(N, T, 3, size, size) crops of the photographs, each panning slowly in its own direction."""
    frames, size = spec.frames, spec.size
    photos = _photos()
    which = rng.integers(0, len(photos), count)
    heading = rng.uniform(0, 2 * math.pi, count)
    speed = rng.uniform(0.2, 0.5, count) * size / 32.0
    steps = np.arange(frames)[None, :]
    out = torch.empty(count, frames, 3, size, size)
    u, v = _canvas_grid(size)
    for index, photo in enumerate(photos):
        rows = np.flatnonzero(which == index)
        if not len(rows):
            continue
        height, width = photo.shape[-2:]
        travel = speed[rows, None] * steps
        margin = float(speed.max()) * frames + 1
        left = rng.uniform(margin, width - size - margin, len(rows))[:, None] + np.cos(heading[rows])[:, None] * travel
        top = rng.uniform(margin, height - size - margin, len(rows))[:, None] + np.sin(heading[rows])[:, None] * travel
        left_t = torch.from_numpy(left).float()[..., None, None]
        top_t = torch.from_numpy(top).float()[..., None, None]
        grid = torch.stack(((left_t + u) / width * 2 - 1, (top_t + v) / height * 2 - 1), dim=-1)
        grid = grid.reshape(1, len(rows) * frames * size, size, 2)
        sampled = F.grid_sample(photo, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out[rows] = sampled.reshape(3, len(rows), frames, size, size).permute(1, 2, 0, 3, 4)
    return out


def _check_digits(digits: np.ndarray, count: int, split: str, pool: np.ndarray) -> np.ndarray:
    """The ``digits`` override of :func:`generate` as int64, refused unless it holds ``count`` images of ``split``."""
    digits = np.asarray(digits)
    if digits.shape != (count,) or not np.issubdtype(digits.dtype, np.integer):
        raise ValueError(f"digits must be {count} integer indices into load_digits, got shape {digits.shape}")
    outside = np.setdiff1d(digits, pool)
    if len(outside):
        raise ValueError(f"digits {outside[:5].tolist()} are not images of the {split!r} split")
    return digits.astype(np.int64)


def generate(
    split: str, count: int, seed: int, spec: ClipSpec = ClipSpec(), digits: np.ndarray | None = None
) -> Clips:
    """``count`` clips of ``split`` ("train" or "val"), the same for the same arguments.

    Verbs cycle through the eight motions so every verb is equally common; digits, placements, colours,
    backgrounds and noise are drawn from ``seed``.

    ``digits`` (``count`` indices into ``load_digits``, as ``Clips.digit_index``, each one of the split's images)
    replaces the drawn digit images after they are drawn, so everything else (motion track, background and its pan,
    colour, noise) is the same as without it: the same clips showing other digits, labelled with their class.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    images, targets = _digits()
    pool = split_indices(split)
    rng = np.random.default_rng(seed)
    verbs = rng.permutation(np.arange(count) % len(VERBS))
    digit_index = rng.choice(pool, count)
    if digits is not None:
        digit_index = _check_digits(digits, count, split, pool)
    track = torch.from_numpy(_tracks(rng, verbs, spec))
    background = _render_backgrounds(rng, count, spec) * torch.from_numpy(rng.uniform(0.35, 0.6, count)).float()[
        :, None, None, None, None
    ]
    colour = torch.from_numpy(rng.uniform(0.75, 1.0, (count, 3))).float()[:, None, :, None, None]
    alpha = _render_sprites(images[digit_index], track, spec.size).clamp_(0, 1).unsqueeze(2)
    frames = background * (1 - alpha) + colour * alpha
    noise = torch.from_numpy(rng.normal(0.0, 0.04, frames.shape).astype(np.float32))
    video = (frames + noise).clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return Clips(
        video=video,
        verb=torch.from_numpy(verbs.astype(np.int64)),
        noun=torch.from_numpy(targets[digit_index]),
        digit_index=torch.from_numpy(digit_index.astype(np.int64)),
        track=track,
    )


def validation_set(count: int = VALIDATION_SIZE, spec: ClipSpec = ClipSpec()) -> Clips:
    """The first ``count`` clips of the fixed validation set (``VALIDATION_SIZE`` clips) every checkpoint is
    scored on, so a smaller evaluation is a prefix of the full one."""
    if not 1 <= count <= VALIDATION_SIZE:
        raise ValueError(f"the validation set has {VALIDATION_SIZE} clips; asked for {count}")
    return generate("val", VALIDATION_SIZE, VALIDATION_SEED, spec).head(count)
