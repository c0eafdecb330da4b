"""Choice of merge targets inside a window: which tokens receive merges (targets) and which may be merged (sources).

Every partition returns ``num_targets`` target positions per sequence, sorted ascending; the sources are the rest.

- ``naive``: every gamma-th token.
- ``center`` / ``boundary``: the preferred region (the central H/2 x W/2 patches, or everything else) gets three
  times the target density of the other region. With the central region a quarter of the tokens, ``center`` takes
  half the targets inside (one every gamma/2 tokens) and half outside (one every 3 gamma/2), as in the paper;
  ``boundary`` reverses the densities (the paper only says "the opposite"), which puts 90% of the targets outside.
  Inside each region the targets are spread evenly.
- ``motion``: targets sampled with probability softmax(motion / temperature).
- ``learnable``: targets sampled from softmax(saliency) while training, the top ``num_targets`` by saliency at
  evaluation.

Sampling is without replacement by default (Gumbel top-k, which is exactly successive sampling without
replacement). The paper does not say; ``replacement=True`` draws ``num_targets`` times with replacement and fills
the slots that duplicates leave empty with the most probable tokens not drawn, so every sequence still gets the
same number of targets.

After the first merge tokens no longer sit on a grid. Each token carries its ``centrality`` (the share of its
patches inside the central region, merged by size-weighted average; a token counts as central when it is at least
half central) and its motion (the size-weighted mean motion of its patches).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PARTITIONS = ("naive", "center", "boundary", "motion", "learnable")
REGION_DENSITY_RATIO = 3.0


def count_targets(num_tokens: int, gamma: float) -> int:
    """Targets in a window of ``num_tokens`` tokens: a 1/gamma share, rounded up, at least one, leaving a source."""
    if gamma < 1:
        raise ValueError(f"gamma={gamma} must be >= 1 (targets are a 1/gamma share of the tokens)")
    if num_tokens < 2:
        raise ValueError(f"a window needs at least 2 tokens to merge, got {num_tokens}")
    return min(num_tokens - 1, max(1, math.ceil(num_tokens / gamma)))


def central_mask(height: int, width: int, prefix: int = 0) -> Tensor:
    """(prefix + H*W,) floats: 1 for patches whose centre lies in the central H/2 x W/2 region, 0 elsewhere.

    Prefix tokens (a class token) have no position and count as outside.
    """
    rows = (torch.arange(height) + 0.5 - height / 4).div(height / 2)
    cols = (torch.arange(width) + 0.5 - width / 4).div(width / 2)
    inside_rows = (rows >= 0) & (rows < 1)
    inside_cols = (cols >= 0) & (cols < 1)
    grid = (inside_rows[:, None] & inside_cols[None, :]).flatten().float()
    return torch.cat([torch.zeros(prefix), grid])


def complement(targets: Tensor, num_tokens: int) -> Tensor:
    """The positions (B, N - K) not in ``targets`` (B, K), ascending."""
    is_target = torch.zeros(targets.shape[0], num_tokens, dtype=torch.long, device=targets.device)
    is_target.scatter_(1, targets, 1)
    order = torch.sort(is_target, dim=1, stable=True).indices
    return order[:, : num_tokens - targets.shape[1]]


def naive_targets(batch: int, num_tokens: int, num_targets: int, device: torch.device | str = "cpu") -> Tensor:
    """Evenly spaced targets, position floor(j * N / K) for j < K: every gamma-th token when K = N / gamma."""
    positions = torch.arange(num_targets, device=device) * num_tokens // num_targets
    return positions.unsqueeze(0).expand(batch, -1)


def _evenly_spaced_in_group(in_group: Tensor, wanted: Tensor) -> Tensor:
    """(B, N) bool: ``wanted`` (B,) tokens of each row's group (``in_group`` (B, N) bool), spread evenly."""
    group_size = in_group.sum(dim=1, keepdim=True)
    rank = in_group.long().cumsum(dim=1) - 1
    wanted = wanted.unsqueeze(1)
    slot = (rank * wanted + group_size - 1).div(group_size.clamp(min=1), rounding_mode="floor")
    hit = (slot < wanted) & (slot * group_size.clamp(min=1)).div(wanted.clamp(min=1), rounding_mode="floor").eq(rank)
    return in_group & hit & (wanted > 0)


def region_targets(centrality: Tensor, num_targets: int, prefer: str) -> Tensor:
    """Targets (B, K) with ``prefer`` ('center' or 'boundary') getting three times the other region's density.

    ``centrality`` (B, N) is each token's share of central patches; >= 0.5 counts as central.
    """
    if prefer not in ("center", "boundary"):
        raise ValueError(f"prefer={prefer!r} must be 'center' or 'boundary'")
    central = centrality >= 0.5
    preferred = central if prefer == "center" else ~central
    num_preferred = preferred.sum(dim=1)
    num_other = centrality.shape[1] - num_preferred
    weight = REGION_DENSITY_RATIO * num_preferred
    share = weight / (weight + num_other).clamp(min=1)
    from_preferred = torch.round(share * num_targets).long()
    from_preferred = torch.maximum(from_preferred, num_targets - num_other)
    from_preferred = torch.minimum(from_preferred, num_preferred)
    chosen = _evenly_spaced_in_group(preferred, from_preferred)
    chosen |= _evenly_spaced_in_group(~preferred, num_targets - from_preferred)
    return _first_k_marked(chosen, num_targets)


def _first_k_marked(marked: Tensor, k: int) -> Tensor:
    """The positions (B, k) of the marked tokens, ascending; each row has exactly k marked."""
    order = torch.sort((~marked).long(), dim=1, stable=True).indices
    return order[:, :k].sort(dim=1).values


def sample_targets(
    logits: Tensor,
    num_targets: int,
    *,
    replacement: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Targets (B, K) drawn with probability softmax(logits) (B, N); see the module docstring for ``replacement``."""
    logits = logits.detach().float()
    if replacement:
        draws = torch.multinomial(logits.softmax(dim=1), num_targets, replacement=True, generator=generator)
        drawn = torch.zeros_like(logits).scatter_(1, draws, 1.0)
        ranking = drawn * (logits.max() - logits.min() + 1.0) + logits
    else:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(1e-20, 1.0)
        ranking = logits - torch.log(-torch.log(uniform))
    return ranking.topk(num_targets, dim=1).indices.sort(dim=1).values


def top_targets(scores: Tensor, num_targets: int) -> Tensor:
    """The ``num_targets`` highest-scoring positions (B, K), ascending."""
    return scores.detach().topk(num_targets, dim=1).indices.sort(dim=1).values


def choose_targets(
    partition: str,
    num_targets: int,
    *,
    num_tokens: int,
    batch: int,
    device: torch.device | str = "cpu",
    centrality: Tensor | None = None,
    motion: Tensor | None = None,
    saliency: Tensor | None = None,
    sample: bool = True,
    replacement: bool = False,
    motion_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Target positions (B, K) for one of :data:`PARTITIONS`; ``sample`` False makes ``learnable`` take the top-K."""
    if partition == "naive":
        return naive_targets(batch, num_tokens, num_targets, device)
    if partition in ("center", "boundary"):
        if centrality is None:
            raise ValueError(f"partition={partition!r} needs each token's centrality, got None")
        return region_targets(centrality, num_targets, partition)
    if partition == "motion":
        if motion is None:
            raise ValueError("partition='motion' needs per-token motion magnitudes, got None")
        return sample_targets(motion / motion_temperature, num_targets, replacement=replacement, generator=generator)
    if partition == "learnable":
        if saliency is None:
            raise ValueError("partition='learnable' needs saliency scores, got None")
        if sample:
            return sample_targets(saliency, num_targets, replacement=replacement, generator=generator)
        return top_targets(saliency, num_targets)
    raise ValueError(f"partition={partition!r} is not one of {PARTITIONS}")
