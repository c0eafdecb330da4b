"""Splicing (Pollard & Wray, Figure 8): is merging visual or semantic?

Frames of a donor clip replace every other group of frames of a source clip; the merged model then shows whether
its tokens join patches of the two clips. :func:`cross_clip_share` turns the paper's qualitative picture into a
number: the share of patches held by tokens that hold patches of both clips.
"""

from __future__ import annotations

import torch
from torch import Tensor


def splice(source: Tensor, donor: Tensor, every: int) -> tuple[Tensor, Tensor]:
    """Frames (T, ...) of ``source`` with every other group of ``every`` frames (the second, fourth, ...) taken
    from ``donor``; returns the spliced frames and which frames came from the donor, (T,) bool."""
    if source.shape != donor.shape:
        raise ValueError(f"the donor's frames {tuple(donor.shape)} differ from the source's {tuple(source.shape)}")
    if every < 1:
        raise ValueError(f"splice groups must hold at least 1 frame, got {every}")
    from_donor = (torch.arange(source.shape[0]) // every) % 2 == 1
    mask = from_donor.view(-1, *([1] * (source.dim() - 1))).to(source.device)
    return torch.where(mask, donor, source), from_donor


def step_origins(from_donor: Tensor, frames_per_step: int) -> Tensor:
    """Which clip each of the model's time steps comes from, given which input frames came from the donor and how
    many frames one step holds (a tubelet): 0 the source, 1 the donor, 2 both (a tubelet that mixes them)."""
    steps = from_donor.view(-1, frames_per_step)
    return torch.where(steps.all(dim=1), 1, torch.where(steps.any(dim=1), 2, 0))


def cross_clip_share(sources: Tensor, grid: Tensor, origins: Tensor) -> Tensor:
    """Per clip, the share of (kept) patches held by tokens that hold patches of both clips.

    ``sources`` is a traced forward's (batch, tokens, input tokens) map (:func:`videotome.sources`), ``grid`` the
    model's (input tokens, 3) token grid (:func:`videotome.token_grid`; a class token, time -1, is left out), and
    ``origins`` each time step's clip (:func:`step_origins`). Dropped patches count in neither part.
    """
    patches = grid[:, 0] >= 0
    origin = origins.to(sources.device)[grid[patches, 0].to(sources.device)]
    held = sources[:, :, patches] > 0
    has_source = (held & (origin != 1)).any(dim=-1)
    has_donor = (held & (origin != 0)).any(dim=-1)
    both = (has_source & has_donor).unsqueeze(-1)
    kept = held.any(dim=1).sum(dim=-1).clamp(min=1)
    return (held & both).any(dim=1).sum(dim=-1) / kept
