"""Model adapters: one per family, each knowing its model's layout and calling :mod:`videotome.merge`."""

from __future__ import annotations

from torch import nn

from .base import Adapter
from .motionformer import MotionformerAdapter
from .timesformer import TimesformerAdapter
from .videomae import VideoMAEAdapter
from .vit import Dinov2Adapter, ViTAdapter, VivitAdapter

ADAPTERS: list[Adapter] = [
    VideoMAEAdapter(),
    VivitAdapter(),
    TimesformerAdapter(),
    MotionformerAdapter(),
    ViTAdapter(),
    Dinov2Adapter(),
]


def find_adapter(model: nn.Module) -> Adapter | None:
    """The adapter for the model's class, or None when no family supports it."""
    for adapter in ADAPTERS:
        if isinstance(model, adapter.classes):
            return adapter
    return None
