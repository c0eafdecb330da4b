"""videotome: training-free and learnable token merging for video transformers.

>>> import videotome
>>> videotome.patch(model, r=150)          # merge 150 tokens per layer
>>> print(videotome.plan(model))           # per layer: requested r, clamped r, tokens in and out
>>> videotome.unpatch(model)               # the original model again
"""

from .merge import STRATEGIES
from .patch import layer_stats, patch, plan, sources, token_grid, unpatch
from .plan import SCHEDULES, MergePlan, MergeSettings

__all__ = ["patch", "unpatch", "plan", "sources", "token_grid", "layer_stats", "MergePlan", "MergeSettings", "STRATEGIES", "SCHEDULES"]
__version__ = "0.1.0"
