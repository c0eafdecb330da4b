"""benchmarks/vlm_proxy.py's logic on a random-weight DINOv2 built from its config (no shared data needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import Dinov2Config, Dinov2Model

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import vlm_proxy  # noqa: E402


@pytest.fixture(scope="module")
def model_and_pixels():
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                          image_size=56, patch_size=14, attn_implementation="eager")
    return Dinov2Model(config).eval(), torch.randn(4, 3, 56, 56)


def test_the_split_model_is_the_model_itself(model_and_pixels) -> None:
    model, pixels = model_and_pixels
    with torch.inference_mode():
        features = vlm_proxy.tower(model, pixels, 2)
        joint = torch.cat([features[:, 0], features[:, 1:].flatten(0, 1)]).unsqueeze(0)
        out = vlm_proxy.language_model(model, joint, torch.ones(1, joint.shape[1]), 2, prop_attn=False)
        expected = joint
        for layer in model.encoder.layer[2:]:
            expected = layer(expected)
        torch.testing.assert_close(out, model.layernorm(expected))
        # the tower is the model's own first layers, frame by frame
        reference = model(pixel_values=pixels, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(features, reference)


def test_keeping_everything_changes_nothing(model_and_pixels) -> None:
    model, pixels = model_and_pixels
    with torch.inference_mode():
        features = vlm_proxy.tower(model, pixels, 2)
        reference = vlm_proxy.run(model, features, None, 1.0, 2)
        for method in vlm_proxy.METHODS:
            out = vlm_proxy.run(model, features, method, 1.0, 2)
            assert all(torch.equal(a, b) for a, b in zip(out, reference)), method.name


def test_every_method_at_every_keep_is_compared(model_and_pixels) -> None:
    model, pixels = model_and_pixels
    rows = vlm_proxy.compare(model, pixels, keeps=(0.5, 0.25), layers=2)
    assert [(row["method"], row["keep"]) for row in rows] == [
        (method.name, keep) for keep in (0.5, 0.25) for method in vlm_proxy.METHODS]
    for row in rows:
        assert -1 <= row["patch_mean_cosine"] <= 1 + 1e-6 and row["patch_mean_rel_error"] > 0
    assert "| merge + prop attn | 0.5 |" in vlm_proxy.table(rows)
