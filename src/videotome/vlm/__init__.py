"""Video-LLMs: a video's visual tokens merged across space and time before the language model reads them.

``videotome.patch(model, keep=0.25)`` patches a supported class in place; :func:`prepare` returns the reduced
forward/generate arguments for callers who drive the model themselves.
"""

from .models import Prepared, VideoPlan, prepare, supported_classes
from .reduce import VLM_STRATEGIES, VideoMergeSettings, VideoReduction, budget, reduce_video, video_settings

__all__ = ["VLM_STRATEGIES", "Prepared", "VideoMergeSettings", "VideoPlan", "VideoReduction", "budget", "prepare",
           "reduce_video", "supported_classes", "video_settings"]
