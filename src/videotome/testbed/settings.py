"""The reduction settings of the demo and its figures, each a :class:`~videotome.plan.MergeSettings`.

The operating point is the paper's: about 9.6% of the initial tokens removed per layer for the joint space-time
models (VideoMAE, ViViT) and 18/196 of each frame's tokens for the divided ones (TimeSformer, Motionformer), constant
schedule. The default settings are the unmerged model (``MergeSettings()``) and every strategy but the hybrid one at
that point; the full ones add the paper's analyses: r over every schedule, the hybrid thresholds, and (divided
models) aligned against per-frame merging. Random strategies use seed 0, the settings' default.
"""

from __future__ import annotations

import copy

import torch

import videotome

from ..adapters import find_adapter
from ..plan import OPERATING_SHARE, SCHEDULES, STRATEGIES, MergeSettings
from ..plan import operating_r as layout_operating_r

DIVIDED_ARCHITECTURES = ("timesformer", "motionformer")
#: the strategies of the default table: all but hybrid, which needs a threshold (the full settings add three)
DEFAULT_STRATEGIES = tuple(strategy for strategy in STRATEGIES if strategy != "hybrid")
THRESHOLDS = (0.5, 0.7, 0.9)
SCALING_SHARES = (0.03, 0.06, 0.096, 0.13)


def is_divided(arch: str) -> bool:
    """Whether the architecture uses divided space-time attention (merging per frame)."""
    return arch in DIVIDED_ARCHITECTURES


def operating_r(model: torch.nn.Module, arch: str, share: float | None = None) -> int:
    """Tokens per layer (per frame for divided models) removing ``share`` of the initial tokens (default: the
    paper's operating point, :data:`~videotome.plan.OPERATING_SHARE`)."""
    share = OPERATING_SHARE["divided" if is_divided(arch) else "joint"] if share is None else share
    return layout_operating_r(find_adapter(model).layout(model), share)


def operating_point(model: torch.nn.Module, arch: str) -> MergeSettings:
    """Merging at the paper's operating point, constant schedule."""
    return MergeSettings(operating_r(model, arch))


def default_settings(model: torch.nn.Module, arch: str) -> list[MergeSettings]:
    """The unmerged model and every strategy but hybrid at the operating point, constant schedule."""
    r = operating_r(model, arch)
    return [MergeSettings()] + [MergeSettings(r, strategy=strategy) for strategy in DEFAULT_STRATEGIES]


def full_settings(model: torch.nn.Module, arch: str) -> list[MergeSettings]:
    """The paper's analyses: schedules over r, hybrid thresholds, and (divided models) aligned merging."""
    settings = default_settings(model, arch)
    r = operating_r(model, arch)
    scaling = sorted({operating_r(model, arch, share) for share in SCALING_SHARES} | {r})
    if is_divided(arch):
        scaling = sorted(set(scaling) | {r + 1, r + 2})  # a frame holds few tokens: each extra one is a real step
    settings += [MergeSettings(value, schedule=schedule) for value in scaling for schedule in SCHEDULES]
    settings += [MergeSettings(r, strategy="hybrid", threshold=threshold) for threshold in THRESHOLDS]
    if is_divided(arch):
        settings += [
            MergeSettings(value, schedule=schedule, divided="aligned") for value in scaling for schedule in SCHEDULES
        ]
    return list(dict.fromkeys(settings))


def patched_copy(model: torch.nn.Module, settings: MergeSettings, *, trace_source: bool = False) -> torch.nn.Module:
    """A copy of ``model`` reduced as ``settings`` say (the unmerged model itself when they remove nothing)."""
    if not settings.reduces:
        return model
    return videotome.patch(copy.deepcopy(model), settings, trace_source=trace_source)
