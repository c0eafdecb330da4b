"""Token reduction by bipartite soft matching, and the paper's baselines. Knows nothing of models.

Reference semantics (Bolya et al., "Token Merging", ICLR 2023; Pollard & Wray, "Video, How Do Your Tokens Merge?"):

1. The metric is a layer's attention keys averaged over heads, compared by cosine similarity.
2. The current sequence splits alternately: A = even positions, B = odd positions (or explicit index sets, as the
   long-video merger uses for its sources and targets).
3. A protected class token at position 0 (in A) gets score -inf, so it is never merged away.
4. r is clamped to (N - protected) // 2, at most every removable A token.
5. Each A token finds its best B match; the r A tokens with the highest scores are reduced into their match.
6. Merging is a size-weighted average, x_dst = sum(s_i x_i) / sum(s_i), s_dst = sum(s_i); sizes start at 1.
7. The new order is [the A tokens that stay, in their previous relative order, then all B tokens in order].

Strategies differ only in which pairs are chosen and whether a chosen A token is averaged into its partner
(``merge``) or removed (``drop``):

- ``merge``: highest cosine pairs, averaged.
- ``drop``: the same choice, removed instead.
- ``random_drop``: r random A tokens removed.
- ``random_merge``: r random A tokens averaged into random B partners.
- ``hybrid``: highest cosine pairs; merged when their cosine is >= ``threshold``, dropped otherwise.

:func:`bipartite_soft_matching` prepares a :class:`Reduction`; :func:`merge_wavg` and :func:`merge_source` apply it.
Everything works on a leading batch dimension, sample by sample, so a sample never depends on its batch mates
(except through the random generator in the random strategies).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "PROFILER_REGION",
    "STRATEGIES",
    "Reduction",
    "apply",
    "bipartite_soft_matching",
    "clamp_r",
    "merge_source",
    "merge_wavg",
    "pair_positions",
    "profiled",
    "repeat",
    "slice_first",
    "take",
    "timed_steps",
]

STRATEGIES = ("merge", "drop", "random_drop", "random_merge", "hybrid")
#: the profiler region (``torch.profiler.record_function``) around every reduction step, for timing its share
PROFILER_REGION = "videotome.merge"


#: where :func:`timed_steps` collects the seconds of each reduction step; None outside such a block
_step_seconds: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("videotome_step_seconds",
                                                                                   default=None)


def profiled() -> contextlib.AbstractContextManager:
    """What surrounds every reduction step: a clock inside :func:`timed_steps`, the profiler region while a profiler
    records, otherwise nothing, since entering a region costs as much as a few small tensor operations (and
    ``torch.compile`` would only warn that it ignores it)."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    seconds = _step_seconds.get()
    if seconds is not None:
        return _clock(seconds)
    if not torch.autograd.profiler._is_profiler_enabled:
        return contextlib.nullcontext()
    return torch.profiler.record_function(PROFILER_REGION)


@contextlib.contextmanager
def _clock(seconds: list[float]) -> Iterator[None]:
    """Append the wall seconds of the block to ``seconds``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds.append(time.perf_counter() - start)


@contextlib.contextmanager
def timed_steps() -> Iterator[list[float]]:
    """Collect the wall seconds of every reduction step run inside the block, one entry per step, in a list.

    Unlike the profiler, which adds its own cost to every tensor operation and so overstates a step made of many
    small ones, this adds two clock readings per step. On the CPU a step's operations finish before it returns; on a
    GPU they are only queued, so the seconds measure the launches, not the work.
    """
    seconds: list[float] = []
    token = _step_seconds.set(seconds)
    try:
        yield seconds
    finally:
        _step_seconds.reset(token)


class Reduction(NamedTuple):
    """A prepared reduction of a batch of token sequences, to apply to any per-token tensor.

    Indices refer to positions inside the A and B sets. ``a_idx``/``b_idx`` name those sets as positions of the
    sequence; ``None`` means the alternating split (A even, B odd). ``weight`` is 1 where a chosen A token is
    averaged into its partner and 0 where it is dropped; ``None`` means every chosen token is averaged.
    """

    kept: Tensor
    src: Tensor
    dst: Tensor
    weight: Tensor | None = None
    a_idx: Tensor | None = None
    b_idx: Tensor | None = None

    @property
    def r(self) -> int:
        """Tokens removed per sequence."""
        return self.src.shape[1]


def clamp_r(r: int, num_tokens: int, protected: int = 0) -> int:
    """Return the r a layer can really remove from ``num_tokens`` tokens: at most (N - protected) // 2."""
    return max(0, min(r, (num_tokens - protected) // 2))


def _split(x: Tensor, a_idx: Tensor | None = None, b_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Split a per-token tensor (B, N, C) into its A and B sets: alternate positions, or the given index sets."""
    if a_idx is None:
        return x[:, ::2], x[:, 1::2]
    return take(x, a_idx), take(x, b_idx)


def _similarity(metric: Tensor, a_idx: Tensor | None = None, b_idx: Tensor | None = None) -> Tensor:
    """The cosine similarity of every A token to every B token, (B, Na, Nb).

    Every token's metric is normalised once, before the split (one pass, not one per set), and the scores are one
    batched matrix product. The norms are expanded to the metric's shape: dividing by a broadcast last dimension of
    size 1 takes a slower path in torch's CPU kernels than the same division by an expanded view."""
    unit = metric / metric.norm(dim=-1, keepdim=True).expand_as(metric)
    a, b = _split(unit, a_idx, b_idx)
    return a @ b.transpose(-1, -2)


def _order(scores: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """The A tokens that stay, in their previous order, (B, Na - r), and the r highest-scoring ones, (B, r), best
    first. Ties keep the earlier token."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.sort(order[:, r:], dim=-1).values, order[:, :r]


def bipartite_soft_matching(
    metric: Tensor,
    r: int,
    *,
    protect_first: bool = False,
    strategy: str = "merge",
    threshold: float | None = None,
    generator: torch.Generator | None = None,
    a_idx: Tensor | None = None,
    b_idx: Tensor | None = None,
) -> Reduction:
    """Prepare the reduction of r tokens per sequence from ``metric`` (B, N, C), usually the heads' mean key.

    ``protect_first`` keeps position 0 (a class token) out of the removed set. ``a_idx``/``b_idx`` (B, Na)/(B, Nb)
    replace the alternating split with explicit sets (the removable set A and the receiving set B).
    ``r`` is clamped as in :func:`clamp_r`. Random strategies draw from ``generator`` (the global one if None).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if strategy == "hybrid" and threshold is None:
        raise ValueError("strategy='hybrid' needs a cosine threshold in [-1, 1], got threshold=None")
    batch, num_tokens = metric.shape[:2]
    if a_idx is None:
        num_a, num_b = (num_tokens + 1) // 2, num_tokens // 2
        r = clamp_r(r, num_tokens, int(protect_first))
    else:
        num_a, num_b = a_idx.shape[1], b_idx.shape[1]
        r = max(0, min(r, num_a - int(protect_first)))

    random = strategy.startswith("random")
    if random:
        device = generator.device if generator is not None else metric.device
        scores = torch.rand(batch, num_a, generator=generator, device=device).to(metric.device)
        if strategy == "random_merge":
            partner = torch.randint(num_b, (batch, num_a), generator=generator, device=device).to(metric.device)
        else:
            partner = torch.zeros(batch, num_a, dtype=torch.long, device=metric.device)
    else:
        similarity = _similarity(metric, a_idx, b_idx)
        scores = similarity.amax(dim=-1)
    if protect_first:
        scores[:, 0] = -math.inf  # scores is a fresh tensor in every branch above
    kept, src = _order(scores, r)
    if random:
        dst = partner.gather(1, src)
    else:
        # only the chosen tokens need their partner: on the CPU the index of a maximum is many times slower to
        # reduce than the maximum alone, so it is taken over the r chosen rows, not over all Na
        dst = take(similarity, src).argmax(dim=-1)

    weight = None
    if strategy in ("drop", "random_drop"):
        weight = torch.zeros(src.shape, dtype=metric.dtype, device=metric.device)
    elif strategy == "hybrid":
        weight = (scores.gather(1, src) >= threshold).to(metric.dtype)
    return Reduction(kept, src, dst, weight, a_idx, b_idx)


def _positions(reduction: Reduction, num_tokens: int) -> tuple[Tensor, Tensor]:
    """Sequence positions of the output's tokens in their new order (the kept A tokens, then every B token),
    (B, N - r), and of the chosen A tokens, (B, r)."""
    if reduction.a_idx is None:
        b_pos = torch.arange(1, num_tokens, 2, device=reduction.kept.device).expand(reduction.kept.shape[0], -1)
        return torch.cat([2 * reduction.kept, b_pos], dim=1), 2 * reduction.src
    a_idx = reduction.a_idx
    return torch.cat([a_idx.gather(1, reduction.kept), reduction.b_idx], dim=1), a_idx.gather(1, reduction.src)


def pair_positions(reduction: Reduction, num_tokens: int) -> tuple[Tensor, Tensor]:
    """Sequence positions (B, r) of each chosen A token and of the B token it was matched with, in the input of a
    reduction of sequences of ``num_tokens`` tokens (for analysis: the pairs' cosines, which frames they join)."""
    _, src_pos = _positions(reduction, num_tokens)
    if reduction.b_idx is None:
        return src_pos, 2 * reduction.dst + 1
    return src_pos, reduction.b_idx.gather(1, reduction.dst)


def _batch_index(pos: Tensor) -> Tensor | None:
    """Each sequence's index in the batch, (B, 1), for :func:`_flat_rows`; None for a batch of one."""
    return None if pos.shape[0] == 1 else torch.arange(pos.shape[0], device=pos.device).unsqueeze(1)


def _flat_rows(pos: Tensor, tokens: int, batch_index: Tensor | None) -> Tensor:
    """Positions (B, K) in sequences of ``tokens`` tokens as row numbers of the flattened batch, (B * K,).

    ``batch_index`` is :func:`_batch_index` of pos, made once when several position sets share it (None: a batch of
    one, which needs no offsets)."""
    return pos.reshape(-1) if batch_index is None else (pos + batch_index * tokens).flatten()


def _select_rows(x: Tensor, rows: Tensor, count: int) -> Tensor:
    """Rows ``rows`` (flat row numbers, :func:`_flat_rows`) of x (B, N, C), ``count`` per sequence: (B, count, C)."""
    batch, _, channels = x.shape
    return x.reshape(-1, channels).index_select(0, rows).view(batch, count, channels)


def take(x: Tensor, pos: Tensor) -> Tensor:
    """Rows of x (B, N, C) at sequence positions pos (B, K): (B, K, C).

    One ``index_select`` over the flattened batch: on CPU several times faster than ``gather`` with an index
    expanded over the channels, and the reduction's main cost at small sizes.
    """
    return _select_rows(x, _flat_rows(pos, x.shape[1], _batch_index(pos)), pos.shape[1])


class _Rows(NamedTuple):
    """A reduction's flat row numbers (:func:`_flat_rows`), computed once and shared by every tensor it reduces:
    the output's tokens in the input, the chosen A tokens in the input, and their partners in the output; and how
    many tokens each output sequence holds."""

    order: Tensor
    src: Tensor
    receiving: Tensor
    length: int


def _rows(reduction: Reduction, num_tokens: int) -> _Rows:
    """The flat row numbers of ``reduction`` applied to sequences of ``num_tokens`` tokens."""
    order, src_pos = _positions(reduction, num_tokens)
    receiving = reduction.kept.shape[1] + reduction.dst
    length = order.shape[1]
    index = _batch_index(order)
    return _Rows(_flat_rows(order, num_tokens, index), _flat_rows(src_pos, num_tokens, index),
                 _flat_rows(receiving, length, index), length)


def apply(reduction: Reduction, x: Tensor) -> Tensor:
    """Reduce a per-token tensor (B, N, C): kept A tokens, then B tokens with chosen A tokens summed in.

    Use :func:`merge_wavg` for features; summing is right for quantities that add up (sizes, source maps).
    """
    batch, tokens, channels = x.shape
    rows = _rows(reduction, tokens)
    flat = x.reshape(-1, channels)
    src = flat.index_select(0, rows.src)
    if reduction.weight is not None:
        src = src * reduction.weight.reshape(-1, 1).to(src.dtype)
    out = flat.index_select(0, rows.order).index_add_(0, rows.receiving, src)
    return out.view(batch, rows.length, channels)


def _size_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type sizes are kept in for features of ``dtype``: float32 for half types, else the features' own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def slice_first(x: Tensor, size: Tensor | None, r: int) -> tuple[Tensor, Tensor]:
    """The zero-cost ideal of a reduction, for benchmarks: the first N - r tokens of x (B, N, C) and their sizes
    (B, N - r, 1), by a slice, with no matching and no averaging; the same token counts as removing r tokens."""
    keep = x.shape[1] - r
    if size is None:
        size = torch.ones(x.shape[0], keep, 1, dtype=_size_dtype(x.dtype), device=x.device)
    return x[:, :keep], size[:, :keep]


def merge_wavg(reduction: Reduction, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge of features x (B, N, C); returns the new x and sizes (B, N', 1).

    ``size`` None means every token holds one patch. The cost is one copy of x plus work on the r chosen pairs: a
    receiving token x_dst of new size S = s_dst + sum(s_src) becomes x_dst + sum((x_src - x_dst) * s_src / S), which
    is the size-weighted mean (x_dst * s_dst + sum(x_src * s_src)) / S and needs no rescaling of the receiving rows
    first. Sizes are kept in float32 for half inputs.
    """
    batch, tokens, channels = x.shape
    work = _size_dtype(x.dtype)
    rows = _rows(reduction, tokens)
    # sizes are indexed as one flat vector: selecting rows of one element from a (rows, 1) matrix is several times
    # slower on the CPU
    if size is None:
        src_size = torch.ones(rows.src.shape[0], dtype=work, device=x.device)
        new_size = torch.ones(rows.order.shape[0], dtype=work, device=x.device)
    else:
        flat_size = size.reshape(-1).to(work)
        src_size = flat_size.index_select(0, rows.src)
        new_size = flat_size.index_select(0, rows.order)
    if reduction.weight is not None:
        src_size = src_size * reduction.weight.reshape(-1).to(work)
    new_size.index_add_(0, rows.receiving, src_size)
    share = (src_size / new_size.index_select(0, rows.receiving)).to(x.dtype).unsqueeze(1)

    flat = x.reshape(-1, channels)
    out = flat.index_select(0, rows.order)
    out.index_add_(0, rows.receiving, (flat.index_select(0, rows.src) - out.index_select(0, rows.receiving)) * share)
    return out.view(batch, rows.length, channels), new_size.view(batch, rows.length, 1)


def merge_source(reduction: Reduction, source: Tensor | None, num_tokens: int | None = None) -> Tensor:
    """Carry the (B, N, N_input) map of which input tokens each token holds through a reduction.

    ``source`` None starts from the identity over ``num_tokens`` input tokens. Dropped tokens leave their
    input tokens unassigned (a zero column).
    """
    if source is None:
        batch = reduction.kept.shape[0]
        eye = torch.eye(num_tokens, device=reduction.kept.device)
        source = eye.unsqueeze(0).expand(batch, -1, -1)
    return apply(reduction, source)


def repeat(reduction: Reduction, times: int) -> Reduction:
    """Repeat each sample's reduction ``times`` times along the batch, for groups that share one matching
    (every frame of a clip in aligned mode, where row b * times + t is frame t of clip b)."""
    return Reduction(*(None if t is None else t.repeat_interleave(times, dim=0) for t in reduction))
