"""Loading a local checkpoint directory into the right class, never downloading."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

#: model types whose checkpoints are video classifiers; anything else loads as a backbone (ViT, DINOv2)
VIDEO_MODEL_TYPES = ("videomae", "vivit", "timesformer", "motionformer")
#: image backbones that run on a video frame by frame (its frames are a batch of images)
IMAGE_MODEL_TYPES = ("vit", "dinov2")
#: the testbed checkpoints packaged with videotome, one directory per architecture; ``testbed:ARCH`` names one
TESTBED_CHECKPOINTS = Path(__file__).parent / "testbed" / "checkpoints"
TESTBED_PREFIX = "testbed:"
#: the ``config.json`` key of a checkpoint's own evaluation defaults: ``{"heads": "verb:8,noun:10", "sampling":
#: {"frames", "sampling", "stride"}}`` (Hugging Face keeps unknown keys; both parts are optional)
SETTINGS_KEY = "videotome"


def stored_settings(config: Any) -> dict[str, Any]:
    """The evaluation defaults a checkpoint's config carries under ``SETTINGS_KEY`` ({} when it has none)."""
    return dict(getattr(config, SETTINGS_KEY, None) or {})


def resolve_model_dir(reference: str | Path) -> Path:
    """The local directory of a model: the path itself, a packaged testbed checkpoint (``testbed:ARCH``), or the
    Hugging Face cache's copy of a Hub id."""
    if str(reference).startswith(TESTBED_PREFIX):
        return testbed_dir(str(reference).removeprefix(TESTBED_PREFIX))
    path = Path(reference)
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(reference), local_files_only=True))
    except (OSError, ValueError) as error:  # not cached, or not a valid Hub id
        raise ValueError(
            f"model {str(reference)!r} is not a local directory nor in the Hugging Face cache; download it first, "
            f"e.g. hf download {reference} --local-dir DIR, and pass DIR"
        ) from error


def testbed_dir(arch: str) -> Path:
    """The directory of the packaged testbed checkpoint of ``arch``; refused, naming those there are, when none."""
    directory = TESTBED_CHECKPOINTS / arch
    if not arch or not (directory / "config.json").is_file():
        packaged = sorted(path.parent.name for path in TESTBED_CHECKPOINTS.glob("*/config.json"))
        raise ValueError(f"no packaged testbed checkpoint {arch!r}; expected {TESTBED_PREFIX}ARCH with ARCH one of "
                         f"{packaged}")
    return directory.resolve()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-tensor "Loading weights" bar: a local load takes a moment, and our commands show
    their own progress."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def load_local_model(reference: str | Path) -> nn.Module:
    """A video classifier (Hugging Face's or our Motionformer) or an image backbone, in eval mode."""
    from transformers import AutoConfig, AutoModel, AutoModelForVideoClassification

    from . import models  # noqa: F401  (registers Motionformer with the Auto classes)

    directory = resolve_model_dir(reference)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    auto = AutoModelForVideoClassification if config.model_type in VIDEO_MODEL_TYPES else AutoModel
    with quiet_loading():
        return auto.from_pretrained(directory, local_files_only=True).eval()
