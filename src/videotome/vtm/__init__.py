"""Learnable video token merging for long videos (Lee et al., NeurIPS 2024) over frozen per-frame tokens."""

from videotome.vtm.model import VideoTokenMerger, VTMConfig, VTMOutput, vtm_loss
from videotome.vtm.partition import PARTITIONS

__all__ = ["PARTITIONS", "VTMConfig", "VTMOutput", "VideoTokenMerger", "vtm_loss"]
