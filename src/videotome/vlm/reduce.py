"""Reducing one video's visual tokens before a language model reads them. Knows nothing of models.

A video-LLM's vision tower turns T frames into T x S visual tokens; the language model then attends over all of them.
:func:`reduce_video` applies the paper's bipartite soft matching (:mod:`videotome.merge`) to those tokens once, in
rounds of at most half the tokens until the budget is reached: jointly over all frames of the video (the paper's
joint space-time matching), or frame by frame (``mode="per_frame"``). Sizes are carried, merged tokens are
size-weighted averages, and the paper's baselines (``drop``, ``random_drop``, ``random_merge``) choose differently
from the same code. The result is in the video's own order (each output token sits where its representative, the
destination token it was merged into, sat), so the language model reads the video in time order.

:class:`VideoMergeSettings` is the one description of such a setting: :func:`videotome.patch` on a video-LLM takes
it, and the ``videotome vlm`` commands make their flags from its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..merge import STRATEGIES, bipartite_soft_matching, merge_wavg, take
from ..plan import read_switch

#: the strategies a video-LLM reduction takes: the image/video models' ones, less ``hybrid`` (which needs a
#: threshold on key cosines that visual features after the projector have no calibrated scale for)
VLM_STRATEGIES = tuple(name for name in STRATEGIES if name != "hybrid")
MODES = ("joint", "per_frame")
POSITIONS = ("destination", "compact")


def check_keep(value: float) -> float:
    """The kept share of a video's visual tokens: a number in (0, 1]; anything else is refused, naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"keep={value!r} must be a share of the visual tokens in (0, 1]")
    return float(value)


def read_keep(text: str) -> float:
    """``keep`` from the command line (:func:`check_keep`)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"keep must be a number in (0, 1], got {text!r}") from None
    return check_keep(value)


@dataclass(frozen=True)
class VideoMergeSettings:
    """How a video-LLM's visual tokens are reduced before its language model. Checked here, before any model work.

    ``keep`` is the share of each video's visual tokens that reach the language model (``r = 1 - keep`` spells the
    same setting as the share removed, :func:`video_settings`).
    """

    keep: float = field(
        default=0.25, metadata={"help": "share of each video's visual tokens the language model sees, in (0, 1]",
                                "parse": read_keep}
    )
    strategy: str = field(default="merge", metadata={"help": "how tokens are removed", "choices": VLM_STRATEGIES})
    mode: str = field(
        default="joint",
        metadata={"help": "match over all frames of a video at once, or within each frame", "choices": MODES},
    )
    prop_attn: bool | None = field(
        default=None,
        metadata={"help": "proportional attention in the language model: on, off, or default (on where the "
                          "attention takes a float mask)", "parse": read_switch, "choices": ("on", "off", "default")},
    )
    positions: str = field(
        default="destination",
        metadata={"help": "a merged token's position: its destination's, or renumbered without gaps",
                  "choices": POSITIONS},
    )
    seed: int | None = field(default=0, metadata={"help": "seed of the random strategies (None: torch's generator)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", check_keep(self.keep))
        for name, allowed in (("strategy", VLM_STRATEGIES), ("mode", MODES), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.prop_attn is not None and not isinstance(self.prop_attn, bool):
            raise ValueError(f"prop_attn={self.prop_attn!r} must be True, False or None (on where supported)")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r} must be an int or None")

    @property
    def reduces(self) -> bool:
        """Whether any visual token is removed."""
        return self.keep < 1


def video_settings(
    settings: VideoMergeSettings | None = None, *, keep: float | None = None, r: float | None = None, **options: object
) -> VideoMergeSettings:
    """Settings from what a caller passed: a settings value, ``keep`` (the share kept) or ``r`` (the share removed,
    in [0, 1)), and any other field by name. Giving both ``keep`` and ``r`` is refused."""
    if keep is not None and r is not None:
        raise ValueError(f"keep={keep} and r={r} together: give one (r is the share removed, 1 - keep)")
    if r is not None:
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r < 1:
            raise ValueError(f"r={r!r}: on a video-LLM r is the share of visual tokens removed, in [0, 1)")
        keep = 1 - float(r)
    if keep is not None:
        options["keep"] = keep
    names = set(VideoMergeSettings.__dataclass_fields__)
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"unknown video-LLM merge options {unknown}; expected some of {sorted(names | {'r'})}")
    if settings is None:
        return VideoMergeSettings(**options)
    return VideoMergeSettings(**{**settings.__dict__, **options})


class VideoReduction(NamedTuple):
    """Where one video's reduced tokens come from.

    ``position`` (K,): each output token's place among the video's input tokens (its representative, the
    destination of its merges), ascending. ``size`` (K,): how many input tokens it holds (float32). ``assignment``
    (N,): the output token each input token went into, -1 where it was dropped.
    """

    position: Tensor
    size: Tensor
    assignment: Tensor


def budget(tokens_per_frame: int, frames: int, keep: float, mode: str = "joint") -> int:
    """How many of a video's ``frames`` x ``tokens_per_frame`` tokens a reduction keeps: ``keep`` of them, rounded,
    at least one (per frame in ``per_frame`` mode, where every frame keeps the same count)."""
    if mode == "per_frame":
        return frames * max(1, round(keep * tokens_per_frame))
    return max(1, round(keep * frames * tokens_per_frame))


def _round(x: Tensor, metric: Tensor, size: Tensor, owner: Tensor, position: Tensor, r: int, strategy: str,
           generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One round of bipartite soft matching removing r tokens from each group (G, n, .), and the bookkeeping:
    which current token each input token is in (``owner``) and where each current token's representative sat."""
    reduction = bipartite_soft_matching(metric, r, strategy=strategy, generator=generator)
    groups, tokens = owner.shape[0], x.shape[1]
    kept, src, dst = reduction.kept, reduction.src, reduction.dst
    num_kept, num_b = kept.shape[1], tokens // 2
    new_a = torch.empty(groups, (tokens + 1) // 2, dtype=torch.long, device=x.device)
    new_a.scatter_(1, kept, torch.arange(num_kept, device=x.device).expand(groups, -1))
    receiving = num_kept + dst
    if reduction.weight is not None:
        receiving = torch.where(reduction.weight > 0, receiving, -1)
    new_a.scatter_(1, src, receiving)
    remap = torch.empty(groups, tokens, dtype=torch.long, device=x.device)
    remap[:, 0::2] = new_a
    remap[:, 1::2] = num_kept + torch.arange(num_b, device=x.device)
    owner = torch.where(owner >= 0, remap.gather(1, owner.clamp(min=0)), -1)
    position = torch.cat([position[:, 0::2].gather(1, kept), position[:, 1::2]], dim=1)
    shared = metric is x
    if not shared:
        metric = merge_wavg(reduction, metric, size)[0]
    x, size = merge_wavg(reduction, x, size)
    return x, (x if shared else metric), size, owner, position


def reduce_video(
    features: Tensor,
    settings: VideoMergeSettings,
    *,
    metric: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, VideoReduction]:
    """Reduce one video's visual tokens ``features`` (T, S, C), frames by tokens per frame, to the settings' budget.

    ``metric`` (T, S, C') is what tokens are matched on (the features themselves when None). Returns the reduced
    features (K, C) in the video's order and their :class:`VideoReduction`. ``keep=1`` returns the features
    unchanged (the same tensor values, sizes 1). Random strategies draw from ``generator``.
    """
    if features.dim() != 3:
        raise ValueError(f"video features must be (frames, tokens per frame, channels), got shape "
                         f"{tuple(features.shape)}")
    frames, per_frame, channels = features.shape
    total = frames * per_frame
    target = budget(per_frame, frames, settings.keep, settings.mode)
    groups = frames if settings.mode == "per_frame" else 1
    x = features.reshape(groups, total // groups, channels)
    match = x if metric is None else metric.reshape(groups, total // groups, -1)
    group_target = target // groups
    size = None
    owner = torch.arange(total // groups, device=features.device).expand(groups, -1)
    position = owner
    while x.shape[1] > group_target:
        r = min(x.shape[1] - group_target, x.shape[1] // 2)
        x, match, size, owner, position = _round(x, match, size, owner, position, r, settings.strategy, generator)
    if size is None:
        size = torch.ones(groups, x.shape[1], 1, dtype=torch.float32, device=features.device)
    order = position.argsort(dim=1)
    x, size, position = take(x, order), take(size, order), position.gather(1, order)
    ranks = torch.arange(order.shape[1], device=order.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    owner = torch.where(owner >= 0, rank.gather(1, owner.clamp(min=0)), -1)
    offsets = torch.arange(groups, device=features.device).unsqueeze(1)
    position = (position + offsets * (total // groups)).flatten()
    owner = torch.where(owner >= 0, owner + offsets * group_target, -1).flatten()
    return x.reshape(-1, channels), VideoReduction(position, size.reshape(-1).float(), owner)
