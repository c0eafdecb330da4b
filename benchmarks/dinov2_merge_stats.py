"""What DINOv2-small merges on a real clip: per-layer key cosines, and one layer's merging alone (duplication).

    PYTHONPATH=src python benchmarks/dinov2_merge_stats.py

Needs ``../shared/data/dinov2-small`` (a Hugging Face ``Dinov2Model``) and ``../shared/data/clips/bigbuckbunny.mp4``
beside the repository (or in the nearest folder above it that has ``shared/data``); without them it says so and
exits 0. Sixteen frames are decoded with videotome's evaluation code (``read_clip``, uniform sampling over the
clip) and preprocessed as the evaluation harness does (short side resized to 224, centre crop 224x224, pixels / 255,
ImageNet mean and std, as the checkpoint's SOURCE.md says), so each frame is 16 x 16 patches + the class token = 257
tokens. The frames go through the model as a batch of images (each merges on its own).

1. ``videotome.patch(model, r=R, record_stats=True)``, R the constant r that leaves closest to a quarter of the 257
   tokens after the 12th layer (found with ``videotome.plan``): per layer, tokens, merged per frame, and the chosen
   pairs' key cosine (mean, min, max over the 16 frames).
2. ``duplicate_layer(model, pixels, K, N, r=R)`` for K = 0 and K = 11, N the number of copies that leaves closest to
   a quarter: per copy the same statistics (Pollard & Wray, Figure 7).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import videotome
from videotome.analysis import duplicate_layer
from videotome.evaluation.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SamplingConfig,
    preprocess,
    preprocessing_from_dict,
    read_clip,
)

REPOSITORY = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """``shared/data`` in the nearest folder above the repository that has one (``../shared`` for a checkout,
    ``../../shared`` for a worktree under ``wt/``); the first candidate when none has it."""
    candidates = [folder / "shared" / "data" for folder in REPOSITORY.parents]
    return next((path for path in candidates if path.is_dir()), candidates[0])


SHARED = shared_data()
MODEL = SHARED / "dinov2-small"
CLIP = SHARED / "clips" / "bigbuckbunny.mp4"
SIZE = 224
FRAMES = 16
#: the evaluation harness's pipeline for a checkpoint without a preprocessor config, with DINOv2's normalisation
PREPROCESSOR = {
    "size": {"shortest_edge": SIZE},
    "crop_size": SIZE,
    "image_mean": list(IMAGENET_MEAN),
    "image_std": list(IMAGENET_STD),
}


def load() -> tuple[torch.nn.Module, torch.Tensor]:
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(MODEL, local_files_only=True).eval()
    model.config.image_size = SIZE  # the token layout videotome plans for: 16 x 16 patches + the class token
    frames = read_clip(CLIP, SamplingConfig(FRAMES, "uniform"))
    pixels = preprocess(frames, preprocessing_from_dict(PREPROCESSOR, None, SIZE))
    return model, pixels


def choose_r(model: torch.nn.Module, target: float) -> int:
    """The constant r whose plan ends closest to ``target`` tokens (the smaller r on a tie)."""
    best = None
    for r in range(1, 129):
        videotome.patch(model, r=r)
        left = videotome.plan(model).steps()[-1].tokens_out
        if best is None or abs(left - target) < abs(best[1] - target):
            best = (r, left)
    videotome.unpatch(model)
    return best[0]


def copies_for(tokens: int, r: int, target: float, protected: int = 1) -> int:
    """How many copies of a layer removing r tokens (clamped to (N - protected) // 2) end closest to ``target``."""
    best, count, copies = None, tokens, 0
    while True:
        step = min(r, (count - protected) // 2)
        if step < 1:
            break
        count, copies = count - step, copies + 1
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (copies, count)
    return best[0]


def number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def stats_table(stats: list[dict], label: str) -> str:
    header = f"| {label} | tokens in -> out | merged per frame | cosine mean | min | max |"
    lines = [header, "|---|---|---|---|---|---|"]
    for row in stats:
        lines.append(
            f"| {row['layer']} | {row['tokens_in']} -> {row['tokens_out']} | {number(row['merged'], 0)} | "
            f"{number(row['cosine_mean'])} | {number(row['cosine_min'])} | {number(row['cosine_max'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    missing = [str(path) for path in (MODEL / "config.json", CLIP) if not path.is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} not found (the shared data beside the repository)")
        return
    torch.set_num_threads(args.threads)
    model, pixels = load()
    tokens = (SIZE // model.config.patch_size) ** 2 + 1
    target = tokens / 4
    r = choose_r(model, target)
    videotome.patch(model, r=r, record_stats=True)
    print(f"DINOv2-small, {FRAMES} frames of {CLIP.name} at {SIZE}x{SIZE} ({tokens} tokens a frame), r = {r}:\n")
    print(videotome.plan(model), "\n")
    with torch.inference_mode():
        model(pixel_values=pixels)
    print(stats_table(videotome.layer_stats(model), "layer"))
    videotome.unpatch(model)
    copies = copies_for(tokens, r, target)
    for layer in (0, len(model.encoder.layer) - 1):
        result = duplicate_layer(model, pixels, layer, copies, r=r)
        print(f"\nLayer {layer} duplicated {copies} times (r = {r}), {result.x.shape[1]} tokens left:\n")
        print(stats_table(result.stats, "copy"))


if __name__ == "__main__":
    sys.exit(main())
