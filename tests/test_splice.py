"""Splicing a donor clip into a source clip, and the share of patches held by tokens that join the two."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

import videotome
from videotome.analysis import cross_clip_share, splice, step_origins

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_other_group_of_frames_comes_from_the_donor():
    source, donor = torch.zeros(8, 1), torch.ones(8, 1)
    frames, from_donor = splice(source, donor, 2)
    assert frames.flatten().tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert from_donor.tolist() == [False, False, True, True, False, False, True, True]
    assert step_origins(from_donor, 2).tolist() == [0, 1, 0, 1]
    assert step_origins(splice(source, donor, 1)[1], 2).tolist() == [2, 2, 2, 2]  # each tubelet mixes both
    with pytest.raises(ValueError, match="differ from the source's"):
        splice(source, torch.ones(4, 1), 2)


def test_the_share_counts_patches_of_tokens_that_hold_both_clips():
    grid = torch.tensor([[-1, -1, -1], [0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]])  # a class token, 2 steps
    origins = torch.tensor([0, 1])
    sources = torch.tensor([[[1, 0, 0, 0, 0],   # the class token
                             [0, 1, 0, 1, 0],   # source and donor patch together: 2 patches
                             [0, 0, 1, 0, 0]]], dtype=torch.float)  # patch 4 was dropped
    assert cross_clip_share(sources, grid, origins).tolist() == [pytest.approx(2 / 3)]


def test_a_clip_spliced_with_itself_shares_most():
    model, generator = tiny_model("videomae"), torch.Generator().manual_seed(0)
    source = torch.randn(4, 3, 32, 32, generator=generator)
    donors = {"itself": source.clone(), "constant": torch.zeros_like(source),
              "noise": torch.randn(4, 3, 32, 32, generator=generator)}
    videotome.patch(model, r=6, trace_source=True)
    shares = {}
    for name, donor in donors.items():
        frames, from_donor = splice(source, donor, 2)
        with torch.inference_mode():
            model(pixel_values=frames[None])
        shares[name] = cross_clip_share(videotome.sources(model), videotome.token_grid(model),
                                        step_origins(from_donor, 2)).item()
    assert shares["itself"] == max(shares.values()) and shares["itself"] > 0.3
    assert shares["constant"] > 0  # a constant clip still merges with the source somewhere, and it shows
