"""The paper's analyses of how tokens merge: layer duplication, splicing, and pictures of the merges."""

from .duplicate import Duplication, duplicate_layer
from .pictures import owner_map, plot_merges
from .splice import cross_clip_share, splice, step_origins
from .visualize import VisualizeConfig, visualize

__all__ = ["Duplication", "duplicate_layer", "cross_clip_share", "splice", "step_origins", "owner_map",
           "plot_merges", "VisualizeConfig", "visualize"]
