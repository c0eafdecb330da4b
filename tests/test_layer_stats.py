"""Per-layer merge statistics (``record_stats``) and layer duplication, against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, main_output, tiny_input, tiny_model
from test_patch import _heads, _joint_block, _match, _merge

import videotome
from videotome.adapters import find_adapter
from videotome.analysis import duplicate_layer

pytestmark = pytest.mark.usefixtures("one_thread")
JOINT_VIDEO = ("videomae", "vivit")


def _stats(family: str, **options) -> tuple[torch.Tensor, list[dict]]:
    model = tiny_model(family)
    videotome.patch(model, record_stats=True, **options)
    with torch.inference_mode():
        output = main_output(model(pixel_values=tiny_input(family)))
    return output, videotome.layer_stats(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_recording_changes_nothing_and_counts_follow_the_plan(family):
    model = tiny_model(family)
    videotome.patch(model, r=3, strategy="hybrid", threshold=0.5)
    with torch.inference_mode():
        plain = main_output(model(pixel_values=tiny_input(family)))
    recorded, stats = _stats(family, r=3, strategy="hybrid", threshold=0.5)
    assert torch.equal(plain, recorded)
    steps = videotome.plan(model).steps()
    assert [(row["tokens_in"], row["tokens_out"]) for row in stats] == [(s.tokens_in, s.tokens_out) for s in steps]
    for row in stats:  # per clip, every removed token was either merged or dropped
        assert row["merged"] + row["dropped"] == row["tokens_in"] - row["tokens_out"]
        assert -1 <= row["cosine_min"] <= row["cosine_mean"] <= row["cosine_max"] <= 1
        assert (row["temporal_share"] is None) == (family not in JOINT_VIDEO)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_hybrid_threshold_splits_merges_from_drops(family):
    _, stats = _stats(family, r=3)
    low, high = min(row["cosine_min"] for row in stats), max(row["cosine_max"] for row in stats)
    _, all_merged = _stats(family, r=3, strategy="hybrid", threshold=max(-1.0, low - 1e-3))
    _, all_dropped = _stats(family, r=3, strategy="hybrid", threshold=min(1.0, high + 1e-3))
    assert all(row["dropped"] == 0 for row in all_merged) and all(row["merged"] == 0 for row in all_dropped)


def test_first_layer_statistics_equal_a_hand_computation():
    """VideoMAE's first layer sees the embedding's tokens: its pairs, cosines and temporal merges by hand."""
    model, pixels, r = tiny_model("videomae"), tiny_input("videomae"), 3
    _, stats = _stats("videomae", r=r)
    norm, projections, _, _ = _joint_block("videomae", model.videomae.encoder.layer[0])
    frames = videotome.token_grid(model)[:, 0]
    heads = model.config.num_attention_heads
    cosines, temporal = [], []
    for sample in model.videomae.embeddings(pixels, None):
        keys = _heads(projections[1], norm(sample), heads).mean(0)
        for i, j in _match(keys, r, protect_first=False).items():
            cosines.append(F.cosine_similarity(keys[i], keys[j], dim=0).item())
            temporal.append(bool(frames[i] != frames[j]))
    first = stats[0]
    assert first["merged"] == r and first["dropped"] == 0
    assert first["cosine_mean"] == pytest.approx(sum(cosines) / len(cosines), abs=1e-5)
    assert first["cosine_min"] == pytest.approx(min(cosines), abs=1e-5)
    assert first["cosine_max"] == pytest.approx(max(cosines), abs=1e-5)
    assert first["temporal_share"] == pytest.approx(sum(temporal) / len(temporal))


def test_layer_stats_explain_misuse():
    model = tiny_model("vit")
    with pytest.raises(ValueError, match="not patched"):
        videotome.layer_stats(model)
    videotome.patch(model, r=2)
    with pytest.raises(ValueError, match="record_stats=True"):
        videotome.layer_stats(model)
    videotome.patch(model, r=2, record_stats=True)
    with pytest.raises(ValueError, match="run a forward pass"):
        videotome.layer_stats(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_duplication_removes_r_per_copy_until_clamped(family):
    model, pixels = tiny_model(family, layers=4), tiny_input(family)
    result = duplicate_layer(model, pixels, 2, 12, r=2)
    counts = [(row["tokens_in"], row["tokens_out"]) for row in result.stats]
    assert len(counts) == 12 and all(a == b for (_, a), (b, _) in zip(counts, counts[1:]))
    for tokens_in, tokens_out in counts:
        removable = tokens_in - (1 if family != "videomae" else 0)
        groups = 1
        if family in ("timesformer", "motionformer"):
            groups = model.config.num_frames if family == "timesformer" else model.config.num_temporal_tokens
            removable = (tokens_in - 1) // groups
        assert tokens_in - tokens_out == groups * min(2, removable // 2)
    assert result.sources.shape[1] == result.x.shape[1] == counts[-1][1]
    assert torch.equal(result.sources.sum(dim=1), torch.ones_like(result.sources[:, 0]))  # each patch: one token
    assert result.sources.sum(dim=-1).min() >= 1  # and each token holds at least one patch


@pytest.mark.parametrize("family", ["videomae", "vivit", "dinov2"])
def test_duplication_equals_a_naive_loop(family):
    """Copies of layer K's merging, by hand: its norm and key projection on the current tokens, then the paper's
    bipartite matching and size-weighted merge; the features change only by merging."""
    model, pixels, layer, times, r = tiny_model(family, layers=4), tiny_input(family), 2, 3, 2
    result = duplicate_layer(model, pixels, layer, times, r=r)
    hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer]
    norm, projections, _, _ = _joint_block(family, find_adapter(model).layers(model)[layer])
    heads, protect = model.config.num_attention_heads, family != "videomae"
    for sample, expected in zip(hidden, result.x):
        x, size = sample, torch.ones(sample.shape[0])
        for _ in range(times):
            keys = _heads(projections[1], norm(x), heads).mean(0)
            x, size = _merge(x, size, _match(keys, r, protect_first=protect))
        torch.testing.assert_close(expected, x, rtol=1e-5, atol=1e-5)


def test_duplication_refuses_what_it_cannot_do():
    model, pixels = tiny_model("vit"), tiny_input("vit")
    with pytest.raises(ValueError, match="layer 3 is out of range; the model has layers 0 to 2"):
        duplicate_layer(model, pixels, 3, 1, r=2)
    with pytest.raises(ValueError, match="times must be at least 1"):
        duplicate_layer(model, pixels, 0, 0, r=2)
