"""The paper's analyses of how tokens merge: layer duplication and splicing."""

from .duplicate import Duplication, duplicate_layer
from .splice import cross_clip_share, splice, step_origins

__all__ = ["Duplication", "duplicate_layer", "cross_clip_share", "splice", "step_origins"]
