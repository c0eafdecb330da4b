"""Real pretrained DINOv2 ViT-S/14 on real frames: merging keeps the embedding; strategies rank as in the paper."""

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SHARED

import videotome

WEIGHTS = SHARED / "data" / "dinov2-small"
CLIP = SHARED / "data" / "clips" / "bigbuckbunny.mp4"
pytestmark = pytest.mark.skipif(
    not (WEIGHTS / "model.safetensors").exists() or not CLIP.exists(),
    reason="needs ../shared/data/dinov2-small and ../shared/data/clips/bigbuckbunny.mp4 beside the checkout",
)


@pytest.fixture(scope="module")
def model_and_frames():
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(WEIGHTS, local_files_only=True).eval()
    with av.open(str(CLIP)) as container:
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(video=0)) if i % 16 == 0][:8]
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255
    pixels = F.interpolate(pixels, size=(224, 398), mode="bilinear", antialias=True)[..., 87 : 87 + 224]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    pixels = (pixels - mean) / std
    with torch.inference_mode():
        reference = model(pixel_values=pixels).pooler_output
    return model, pixels, reference


def _cls_cosine(model_and_frames, **options) -> float:
    """Mean over frames of the CLS embedding's cosine to the unmerged one, merging 16 tokens per layer."""
    model, pixels, reference = model_and_frames
    with torch.inference_mode():
        videotome.patch(model, 16, **options)
        merged = model(pixel_values=pixels).pooler_output
    videotome.unpatch(model)
    return F.cosine_similarity(merged, reference).mean().item()


def test_merging_keeps_the_cls_embedding(model_and_frames):
    assert _cls_cosine(model_and_frames) >= 0.97


def test_strategies_rank_merge_drop_random_drop_random_merge(model_and_frames):
    runs = {"merge": 1, "drop": 1, "random_drop": 3, "random_merge": 3}
    scores = {
        strategy: np.mean([_cls_cosine(model_and_frames, strategy=strategy, seed=seed) for seed in range(count)])
        for strategy, count in runs.items()
    }
    assert scores["merge"] > scores["drop"] > scores["random_drop"] > scores["random_merge"], scores
