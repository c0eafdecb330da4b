"""The four small testbed architectures, and loading the checkpoints that ship with the package.

All four are 12 layers deep (the paper's operating point needs 12 merging layers) and narrow (hidden size 64, 2 heads),
so that they train in minutes on a CPU. The Hugging Face classes get ``num_labels = 8 + 10``, split into a verb and a
noun head (``HEADS``); our Motionformer has two real heads. TimeSformer, like the published one, sees 8 frames (every
second frame of the 16-frame clips, sampled uniformly); the other three see all 16 as 2-frame tubelets.

Each model's config stores its heads and frame sampling (``config.json``'s ``videotome`` key) and each checkpoint
ships the testbed's ``preprocessor_config.json``, so ``videotome eval`` feeds it with no flags; the in-memory path
(training, the demo) selects frames and converts pixels with the same functions of :mod:`videotome.evaluation.video`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..evaluation.video import SamplingConfig, model_sampling, sample_indices
from ..heads import format_heads, logits_per_head, model_heads
from ..loading import SETTINGS_KEY, TESTBED_CHECKPOINTS, load_local_model
from .data import HEADS, NOUNS, PREPROCESSOR_CONFIG, VERBS, ClipSpec

ARCHITECTURES = ("videomae", "vivit", "timesformer", "motionformer")
CHECKPOINTS = TESTBED_CHECKPOINTS
METADATA = "testbed.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
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


def sampling_of(arch: str, spec: ClipSpec = ClipSpec()) -> SamplingConfig:
    """The frames an architecture takes from a clip of ``spec``: TimeSformer half of them, uniformly (the middle
    frame of each pair); the others all of them."""
    if arch == "timesformer":
        return SamplingConfig(spec.frames // 2, "uniform", 1)
    return SamplingConfig(spec.frames, "dense", 1)


def stored_settings_of(arch: str, spec: ClipSpec = ClipSpec()) -> dict[str, Any]:
    """What a testbed model's config holds under ``SETTINGS_KEY``: its heads and its frame sampling."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    return {"heads": format_heads(HEADS), "sampling": asdict(sampling_of(arch, spec))}


def build_model(arch: str, spec: ClipSpec = ClipSpec()) -> nn.Module:
    """A freshly initialised testbed model of architecture ``arch`` for clips of ``spec``, its config holding its
    heads and frame sampling (``stored_settings_of``)."""
    settings = stored_settings_of(arch, spec)
    common: dict[str, Any] = dict(
        num_frames=settings["sampling"]["frames"],
        image_size=spec.size,
        patch_size=PATCH,
        hidden_size=HIDDEN_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=ATTENTION_HEADS,
        intermediate_size=INTERMEDIATE_SIZE,
        **{SETTINGS_KEY: settings},
    )
    labels = _labels()
    split = dict(num_labels=len(labels), id2label=labels, label2id={name: i for i, name in labels.items()})
    if arch == "videomae":
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        config = VideoMAEConfig(tubelet_size=TUBELET, use_mean_pooling=True, **common, **split)
        return VideoMAEForVideoClassification(config)
    if arch == "vivit":
        from transformers import VivitConfig, VivitForVideoClassification

        common.pop("patch_size")
        config = VivitConfig(tubelet_size=[TUBELET, PATCH, PATCH], **common, **split)
        return VivitForVideoClassification(config)
    if arch == "timesformer":
        from transformers import TimesformerConfig, TimesformerForVideoClassification

        config = TimesformerConfig(attention_type="divided_space_time", **common, **split)
        model = TimesformerForVideoClassification(config)
        with torch.no_grad():
            model.timesformer.embeddings.time_embeddings.copy_(sinusoid_table(config.num_frames, HIDDEN_SIZE))
        return model
    if arch == "motionformer":
        from ..models import MotionformerConfig, MotionformerForVideoClassification

        config = MotionformerConfig(
            tubelet_size=TUBELET,
            head_sizes=list(HEADS.values()),
            head_names=list(HEADS),
            **common,
        )
        return MotionformerForVideoClassification(config)


def frame_indices(model: nn.Module, total: int) -> list[int]:
    """The frames of a ``total``-frame clip the model sees: ``videotome eval``'s sampling with its config's settings."""
    return sample_indices(total, model_sampling(model.config))


def select_frames(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The model's input from a (batch, T, 3, H, W) clip batch: the frames it sees (:func:`frame_indices`)."""
    return pixels[:, frame_indices(model, pixels.shape[1])]


def head_logits(model: nn.Module, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Verb and noun logits of a testbed model for (batch, 16, 3, H, W) pixels (``Clips.pixels``)."""
    output = model(pixel_values=select_frames(model, pixels))
    return logits_per_head(output, model_heads(model.config))


def save_checkpoint(model: nn.Module, directory: str | Path) -> None:
    """Write a testbed checkpoint: weights and ``config.json`` (``save_pretrained``) and the preprocessor config."""
    model.save_pretrained(directory)
    (Path(directory) / PREPROCESSOR_FILE).write_text(json.dumps(PREPROCESSOR_CONFIG, indent=2) + "\n")


def checkpoint_dir(arch: str, root: str | Path = CHECKPOINTS) -> Path:
    """Where the checkpoint of ``arch`` lives under ``root`` (default: the ones packaged with videotome)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    return Path(root) / arch


def require_checkpoint(reference: str | Path, root: str | Path = CHECKPOINTS) -> Path:
    """The directory of a testbed checkpoint (an architecture name, under ``root``, or a directory); refused in one
    line when it holds none, or one without the settings and preprocessor config that ``videotome eval`` reads."""
    directory = checkpoint_dir(str(reference), root) if str(reference) in ARCHITECTURES else Path(reference)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"no testbed checkpoint in {directory} (config.json missing); train one with "
            f"`videotome testbed train --arch ARCH --out {directory}`"
        )
    config = json.loads((directory / "config.json").read_text())
    if SETTINGS_KEY not in config or not (directory / PREPROCESSOR_FILE).is_file():
        raise ValueError(
            f"{directory} was written by an older videotome: it needs {SETTINGS_KEY!r} in config.json "
            f"({json.dumps(stored_settings_of(config.get('model_type', '')))}) and {PREPROCESSOR_FILE} "
            f"({json.dumps(PREPROCESSOR_CONFIG)}); add them or retrain it"
        )
    return directory


def load_checkpoint(reference: str | Path, root: str | Path = CHECKPOINTS) -> nn.Module:
    """A trained testbed model, in eval mode (see :func:`require_checkpoint`)."""
    return load_local_model(require_checkpoint(reference, root)).eval()


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The training record saved next to a checkpoint (command, seed, accuracy, time), or {} when absent."""
    path = Path(directory) / METADATA
    return json.loads(path.read_text()) if path.is_file() else {}
