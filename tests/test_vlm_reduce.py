"""The video-LLM reduction of one video's visual tokens (videotome.vlm.reduce)."""

from __future__ import annotations

import pytest
import torch

from videotome.vlm import VLM_STRATEGIES, VideoMergeSettings, budget, reduce_video, video_settings


def _features(frames: int = 4, tokens: int = 9, channels: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, tokens, channels, generator=generator)
    # frames that repeat with a little noise, as video does: temporal matches exist
    return base + 0.1 * torch.randn(frames, tokens, channels, generator=generator)


def test_keep_one_returns_the_features_unchanged() -> None:
    features = _features()
    out, reduction = reduce_video(features, VideoMergeSettings(keep=1.0))
    assert torch.equal(out, features.reshape(-1, features.shape[-1]))
    assert torch.equal(reduction.position, torch.arange(36))
    assert torch.equal(reduction.assignment, torch.arange(36))
    assert torch.equal(reduction.size, torch.ones(36))


@pytest.mark.parametrize("strategy", VLM_STRATEGIES)
@pytest.mark.parametrize("mode", ["joint", "per_frame"])
@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1])
def test_outputs_are_size_weighted_means_of_their_sources(strategy: str, mode: str, keep: float) -> None:
    features = _features()
    settings = VideoMergeSettings(keep=keep, strategy=strategy, mode=mode)
    out, reduction = reduce_video(features, settings, generator=torch.Generator().manual_seed(1))
    flat = features.reshape(-1, features.shape[-1])
    assert out.shape[0] == budget(9, 4, keep, mode) == reduction.position.numel() == reduction.size.numel()
    for k in range(out.shape[0]):
        members = reduction.assignment == k
        assert members.sum() == reduction.size[k]
        torch.testing.assert_close(out[k], flat[members].mean(0))
        # the representative (destination) is one of the token's own sources
        assert reduction.assignment[reduction.position[k]] == k
    assert torch.all(reduction.position[1:] > reduction.position[:-1])
    if strategy in ("drop", "random_drop"):
        assert reduction.size.eq(1).all() and (reduction.assignment == -1).sum() == 36 - out.shape[0]
    else:
        assert reduction.assignment.ge(0).all() and reduction.size.sum() == 36
    if mode == "per_frame":
        # no token holds sources of two frames
        frame_of = torch.arange(36) // 9
        for k in range(out.shape[0]):
            assert frame_of[reduction.assignment == k].unique().numel() == 1


def test_joint_merging_joins_frames_and_a_separate_metric_decides() -> None:
    features = _features()
    _, joint = reduce_video(features, VideoMergeSettings(keep=0.25))
    frame_of = torch.arange(36) // 9
    assert any(frame_of[joint.assignment == k].unique().numel() > 1 for k in range(joint.size.numel()))
    # matching on another metric changes the choice, the values stay means of the sources
    metric = torch.randn(4, 9, 3, generator=torch.Generator().manual_seed(5))
    out, other = reduce_video(features, VideoMergeSettings(keep=0.25), metric=metric)
    assert not torch.equal(other.assignment, joint.assignment)
    flat = features.reshape(-1, 6)
    for k in range(out.shape[0]):
        torch.testing.assert_close(out[k], flat[other.assignment == k].mean(0))


def test_half_precision_keeps_sizes_in_float32() -> None:
    out, reduction = reduce_video(_features().to(torch.bfloat16), VideoMergeSettings(keep=0.3))
    assert out.dtype == torch.bfloat16 and reduction.size.dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: VideoMergeSettings(keep=0), r"keep=0 must be a share of the visual tokens in \(0, 1\]"),
        (lambda: VideoMergeSettings(keep=1.5), r"keep=1.5 must be"),
        (lambda: VideoMergeSettings(strategy="hybrid"), r"strategy='hybrid' is not one of"),
        (lambda: VideoMergeSettings(mode="space"), r"mode='space' is not one of \('joint', 'per_frame'\)"),
        (lambda: video_settings(keep=0.5, r=0.5), r"keep=0.5 and r=0.5 together"),
        (lambda: video_settings(r=1.0), r"r=1.0: on a video-LLM r is the share of visual tokens removed"),
        (lambda: video_settings(ratio=0.5), r"unknown video-LLM merge options \['ratio'\]"),
        (lambda: reduce_video(torch.zeros(4, 6), VideoMergeSettings()), r"got shape \(4, 6\)"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_r_spells_the_share_removed() -> None:
    assert video_settings(r=0.75) == VideoMergeSettings(keep=0.25)
    expected = VideoMergeSettings(keep=0.5, strategy="drop")
    assert video_settings(VideoMergeSettings(strategy="drop"), keep=0.5) == expected
