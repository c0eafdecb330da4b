"""The four small testbed architectures, and loading the checkpoints that ship with the package.

All four are 12 layers deep (the paper's operating point needs 12 merging layers) and narrow (hidden size 64, 2 heads),
so that they train in minutes on a CPU. The Hugging Face classes get ``num_labels = 8 + 10``, split into a verb and a
noun head (``HEADS``); our Motionformer has two real heads. TimeSformer, like the published one, sees 8 frames (every
second frame of the 16-frame clips); the other three see all 16 as 2-frame tubelets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation.harness import split_heads
from .data import HEADS, NOUNS, VERBS, ClipSpec

ARCHITECTURES = ("videomae", "vivit", "timesformer", "motionformer")
CHECKPOINTS = Path(__file__).parent / "checkpoints"
METADATA = "testbed.json"
HIDDEN_SIZE = 64
LAYERS = 12
ATTENTION_HEADS = 2
INTERMEDIATE_SIZE = 256
PATCH = 8
TUBELET = 2


def _labels() -> dict[int, str]:
    """Names of the 18 outputs of a split-logit model: the verbs, then the nouns."""
    names = [f"verb: {verb}" for verb in VERBS] + [f"noun: {noun}" for noun in NOUNS]
    return dict(enumerate(names))


def sinusoid_table(positions: int, channels: int) -> torch.Tensor:
    """The fixed sine-cosine position table of Vaswani et al. (1, positions, channels), values in [-1, 1].

    Used as the starting value of the TimeSformer's learned time embeddings, which Hugging Face leaves at zero: at
    zero, temporal attention cannot tell frames apart, so the model cannot see which way a digit moves until those
    embeddings have grown, and from scratch that takes thousands of steps (the verb stalls below 50%).
    """
    position = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.pow(10000.0, -torch.arange(0, channels, 2, dtype=torch.float32) / channels)
    table = torch.zeros(positions, channels)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table.unsqueeze(0)


def build_model(arch: str, spec: ClipSpec = ClipSpec()) -> nn.Module:
    """A freshly initialised testbed model of architecture ``arch`` for clips of ``spec``."""
    common: dict[str, Any] = dict(
        image_size=spec.size,
        patch_size=PATCH,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=ATTENTION_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
    )
    labels = _labels()
    split = dict(num_labels=len(labels), id2label=labels, label2id={name: i for i, name in labels.items()})
    if arch == "videomae":
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        config = VideoMAEConfig(num_frames=spec.frames, tubelet_size=TUBELET, use_mean_pooling=True, **common, **split)
        return VideoMAEForVideoClassification(config)
    if arch == "vivit":
        from transformers import VivitConfig, VivitForVideoClassification

        common.pop("patch_size")
        config = VivitConfig(num_frames=spec.frames, tubelet_size=[TUBELET, PATCH, PATCH], **common, **split)
        return VivitForVideoClassification(config)
    if arch == "timesformer":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        config = TimesformerConfig(
            num_frames=spec.frames // 2, attention_type="divided_space_time", **common, **split
        )
        model = TimesformerForVideoClassification(config)
        with torch.no_grad():
            model.timesformer.embeddings.time_embeddings.copy_(sinusoid_table(config.num_frames, HIDDEN_SIZE))
        return model
    if arch == "motionformer":
        from ..models import MotionformerConfig, MotionformerForVideoClassification

        config = MotionformerConfig(
            num_frames=spec.frames,
            tubelet_size=TUBELET,
            head_sizes=list(HEADS.values()),
            head_names=list(HEADS),
            **common,
        )
        return MotionformerForVideoClassification(config)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def model_frames(model: nn.Module) -> int:
    """How many frames the model takes per clip."""
    return int(model.config.num_frames)


def select_frames(pixels: torch.Tensor, frames: int) -> torch.Tensor:
    """Uniformly pick ``frames`` of a (batch, T, ...) clip batch (all of them when T == frames)."""
    total = pixels.shape[1]
    if frames == total:
        return pixels
    if frames > total:
        raise ValueError(f"the model needs {frames} frames but the clips have {total}")
    return pixels[:, torch.linspace(0, total - 1, frames).round().long()]


def head_logits(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Verb and noun logits of a testbed model for (batch, 16, 3, H, W) pixels in [-1, 1]."""
    output = model(pixel_values=select_frames(pixels, model_frames(model)))
    return split_heads(output, HEADS)


def checkpoint_dir(arch: str, root: str | Path = CHECKPOINTS) -> Path:
    """Where the checkpoint of ``arch`` lives under ``root`` (default: the ones packaged with videotome)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    return Path(root) / arch


def load_checkpoint(reference: str | Path, root: str | Path = CHECKPOINTS) -> nn.Module:
    """A trained testbed model, in eval mode: an architecture name (its checkpoint under ``root``) or a directory."""
    from ..loading import load_local_model

    directory = checkpoint_dir(str(reference), root) if str(reference) in ARCHITECTURES else Path(reference)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no testbed checkpoint in {directory} (config.json missing); train one with "
            f"`videotome testbed train --arch ARCH --out {directory}`"
        )
    return load_local_model(directory).eval()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The training record saved next to a checkpoint (command, seed, accuracy, time), or {} when absent."""
    path = Path(directory) / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}
