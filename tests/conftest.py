"""Shared fixtures: tiny models of every supported family, built from configs (no downloads)."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import ViTConfig, ViTModel

from videotome.bench import random_model
from videotome.cli import _commands, build_parser
from videotome.plan import MergeSettings

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
FAMILIES = ("videomae", "vivit", "timesformer", "motionformer", "vit", "dinov2")
_COMMON = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)


def benchmark_script(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported afresh, its folder on ``sys.path`` for this test only (as running
    the script puts it there, so its own imports of the folder's other files resolve)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return importlib.import_module(name)


def tiny_model(family: str, seed: int = 0, layers: int = 3) -> torch.nn.Module:
    """A 32-wide model of the family (3 layers unless told), in eval mode, with seeded random weights."""
    torch.manual_seed(seed)
    common = dict(_COMMON, num_hidden_layers=layers)
    if family == "videomae":
        model = random_model(family, image_size=32, patch_size=8, num_frames=4, tubelet_size=2, num_labels=5, **common)
    elif family == "vivit":
        model = random_model(family, image_size=32, num_frames=4, tubelet_size=[2, 8, 8], num_labels=5, **common)
    elif family == "timesformer":
        model = random_model(family, image_size=32, patch_size=8, num_frames=4, num_labels=5, **common)
    elif family == "motionformer":
        model = random_model(family, image_size=32, patch_size=8, num_frames=8, tubelet_size=2, num_labels=5, **common)
    elif family == "vit":
        model = ViTModel(ViTConfig(image_size=32, patch_size=8, **common))
    elif family == "dinov2":
        common.pop("intermediate_size")
        model = random_model(family, image_size=32, patch_size=8, layerscale_value=0.5, **common)
    else:
        raise ValueError(family)
    return model.eval()


def tiny_input(family: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Pixel values for :func:`tiny_model`: 32x32 images, or clips of 4 frames (8 for Motionformer's tubelets)."""
    generator = torch.Generator().manual_seed(seed)
    frames = 8 if family == "motionformer" else 4
    shape = (batch, 3, 32, 32) if family in ("vit", "dinov2") else (batch, frames, 3, 32, 32)
    return torch.randn(shape, generator=generator)


def main_output(output) -> torch.Tensor:
    """Logits of a classifier, the last hidden state of a backbone."""
    return output["logits"] if "logits" in output else output["last_hidden_state"]


@pytest.fixture
def one_thread():
    """Run on one torch thread: on a shared 2-core machine more threads oversubscribe and slow small steps badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


#: spellings kept for the single-process case only; each has a torchrun-safe canonical flag beside it
SINGLE_PROCESS_ALIASES = {alias for item in MergeSettings.__dataclass_fields__.values()
                          for alias in item.metadata.get("aliases", ())}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every runnable command's parser, by its name after ``videotome`` (``eval``, ``vtm train``, ...)."""
    return {command.prog.removeprefix("videotome "): command for command in _commands(build_parser())}


def missing_flags(command: str, argv: Sequence[str]) -> list[str]:
    """The options of ``command`` that ``argv`` does not give (by any spelling but the single-process aliases)."""
    given = set(argv)
    return [
        action.option_strings[0]
        for action in command_parsers()[command]._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
        and not given & (set(action.option_strings) - SINGLE_PROCESS_ALIASES)
    ]


def write_video(path: Path, frames: int = 4, size: int = 32, fps: int = 4) -> Path:
    """A small decodable MPEG-4 clip of ``frames`` grey frames getting brighter, written with PyAV."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        step = 160 // frames
        for index in range(frames):
            image = np.full((size, size, 3), step * index, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path
