"""Video-LLMs: a video's visual tokens merged across space and time before the language model reads them."""

from .reduce import VLM_STRATEGIES, VideoMergeSettings, VideoReduction, budget, reduce_video, video_settings

__all__ = ["VLM_STRATEGIES", "VideoMergeSettings", "VideoReduction", "budget", "reduce_video", "video_settings"]
