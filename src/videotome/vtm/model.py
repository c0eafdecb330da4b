"""Video token merging (VTM) network for long videos (Lee et al., NeurIPS 2024), over frozen per-frame tokens.

Input: tokens (batch, frames, tokens per frame, channels) and optional per-token motion (batch, frames, tokens per
frame). Three blocks look at windows of (L1, L2, L3) consecutive frames; each block is

    x = x + dropout(attention(LayerNorm(x)))   within each window
    merge the window's tokens                   (sources into targets, see :mod:`videotome.vtm.partition`)
    x = GELU(Linear(x))                         (the channels shrink)

followed by average pooling over all tokens and a linear head. Windows are folded into the batch dimension, so
neither attention nor merging can cross a window. Windows must nest: each L divides the next and the last divides
the number of frames (merging keeps a window's tokens contiguous, so a later window is a run of earlier ones).

Merging (the ``merge`` strategy of :func:`videotome.merge.bipartite_soft_matching`): the R = merge_ratio * |S|
sources whose keys have the highest cosine similarity to a target merge into that target. The metric is the full
key vector (all heads). Features merge by plain average by default (what the paper describes);
``weighted_merge=True`` weighs by the number of patches each token already holds.

The learnable partition scores each token's saliency s = tanh(K U_s) from its keys. Target choice is not
differentiable, so during training an auxiliary path runs beside the main one: the same blocks with
saliency-biased attention softmax((Q K^T + 1 s^T) / sqrt(d)) V, its own saliency-based partition and merge, and its
own head; the training loss adds its task loss (see :func:`vtm_loss`), which is how U_s learns. The paper does not
say whether the auxiliary path shares the main path's attention and Linear weights: ``aux_weights='shared'``
(default) reuses them, ``'separate'`` gives it its own copies; U_s is always shared, since it is what the auxiliary
path trains for the main one. The auxiliary path is never computed in evaluation mode. ``saliency_bias_scale``
multiplies s in the auxiliary logits (1, the default, is the paper's formula; since |s| <= 1 and the logits are
divided by sqrt(d), a larger scale gives U_s a stronger say, which helps it learn on small problems).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videotome.merge import apply, bipartite_soft_matching, merge_wavg
from videotome.vtm.partition import PARTITIONS, central_mask, choose_targets, complement, count_targets

AUX_WEIGHTS = ("shared", "separate")
ATTENTION_KERNELS = ("sdpa", "math")


@dataclass
class VTMConfig:
    """Architecture and merging settings. ``merge=False`` gives the unmerged baseline with the same blocks.

    ``channels`` are the blocks' output widths; None halves twice and then keeps the width (1024 -> 512 -> 256 ->
    256), the reading of the paper that ends at its stated 256 channels after three blocks. ``attention``
    ``'sdpa'`` uses PyTorch's fused kernels (flash / memory-efficient, no N x N matrix kept); ``'math'`` forms the
    attention matrix explicitly, as a plain implementation (and, judging by its memory figures, the paper) does.
    """

    in_channels: int = field(default=1024, metadata={"cli": False})
    num_outputs: int = field(default=10, metadata={"cli": False})
    channels: tuple[int, ...] | None = field(
        default=None, metadata={"help": "output channels of each block (default: halve twice, then keep)"}
    )
    windows: tuple[int, ...] = field(
        default=(6, 30, 60), metadata={"help": "frames per window of each block (each divides the next)"}
    )
    num_heads: int = field(default=8, metadata={"help": "attention heads", "flag": "--heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after attention"})
    merge: bool = field(default=True, metadata={"help": "the unmerged baseline (same blocks)", "flag": "--no-merge"})
    partition: str = field(
        default="learnable", metadata={"help": "how merge targets are chosen", "choices": PARTITIONS}
    )
    gamma: float = field(default=6.0, metadata={"help": "targets are a 1/gamma share of a window's tokens"})
    merge_ratio: float = field(default=0.8, metadata={"help": "share of the sources merged (R / |S|)"})
    weighted_merge: bool = field(default=False, metadata={"help": "size-weighted instead of plain averages"})
    grid: tuple[int, int] | None = field(default=None, metadata={"cli": False})
    sample_with_replacement: bool = field(
        default=False, metadata={"help": "draw sampled targets with replacement (default without)"}
    )
    motion_temperature: float = field(default=1.0, metadata={"help": "temperature of the motion partition's softmax"})
    aux_weights: str = field(
        default="shared",
        metadata={"help": "whether the auxiliary path reuses the main path's weights", "choices": AUX_WEIGHTS},
    )
    saliency_bias_scale: float = field(
        default=1.0, metadata={"help": "multiplies the saliency added to the auxiliary attention logits (1 = paper)"}
    )
    attention: str = field(
        default="sdpa",
        metadata={"help": "fused kernels, or the explicit attention matrix (math)", "choices": ATTENTION_KERNELS},
    )

    def __post_init__(self) -> None:
        self.windows = tuple(self.windows)
        if self.channels is not None:
            self.channels = tuple(self.channels)
        if self.grid is not None:
            self.grid = tuple(self.grid)
        if len(self.block_channels) != len(self.windows):
            raise ValueError(f"channels={self.block_channels} and windows={self.windows} need one entry per block")
        for before, after in zip(self.windows, self.windows[1:]):
            if after % before:
                raise ValueError(f"windows={self.windows} must nest: each window length divides the next")
        if self.partition not in PARTITIONS:
            raise ValueError(f"partition={self.partition!r} is not one of {PARTITIONS}")
        if self.attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention={self.attention!r} is not one of {ATTENTION_KERNELS}")
        if self.aux_weights not in AUX_WEIGHTS:
            raise ValueError(f"aux_weights={self.aux_weights!r} is not one of {AUX_WEIGHTS}")
        if not 0 <= self.merge_ratio <= 1:
            raise ValueError(f"merge_ratio={self.merge_ratio} must be in [0, 1] (the share of sources merged)")

    def check_frames(self, frames: int) -> None:
        """Refuse a frame count that the last (largest) window does not divide."""
        if frames % self.windows[-1]:
            raise ValueError(f"{frames} frames do not split into windows of {self.windows[-1]} frames "
                             f"(windows={self.windows}; the last must divide the frame count)")

    def frame_grid(self, per_frame: int) -> tuple[int, int, int]:
        """(height, width, prefix tokens) of a frame: the configured grid, else a square with 0 or 1 prefix."""
        if self.grid is not None:
            height, width = self.grid
            if per_frame < height * width:
                raise ValueError(f"{per_frame} tokens per frame cannot hold grid={self.grid}")
            return height, width, per_frame - height * width
        for prefix in (0, 1):
            side = math.isqrt(per_frame - prefix)
            if side * side == per_frame - prefix:
                return side, side, prefix
        raise ValueError(f"{per_frame} tokens per frame is not a square grid (plus a class token); set grid=(H, W)")

    @property
    def block_channels(self) -> tuple[int, ...]:
        """Output width of each block (``channels``, or the default halving)."""
        if self.channels is not None:
            return self.channels
        widths = [self.in_channels // 2] + [self.in_channels // 4] * (len(self.windows) - 1)
        return tuple(widths[: len(self.windows)])

    @property
    def learnable(self) -> bool:
        """Whether this model has a saliency projection and an auxiliary path."""
        return self.merge and self.partition == "learnable"


class VTMOutput(NamedTuple):
    """Main head's output (B, num_outputs), and the auxiliary head's in training with the learnable partition."""

    logits: Tensor
    aux_logits: Tensor | None = None


class WindowTokens(NamedTuple):
    """Tokens of a batch of windows and what they carry through merges.

    ``x`` (B, N, C); ``size`` (B, N, 1) patches per token; ``centrality`` and ``motion`` (B, N, 1), size-weighted
    means over each token's patches (``motion`` None when no motion was given).
    """

    x: Tensor
    size: Tensor
    centrality: Tensor
    motion: Tensor | None

    def fold(self, windows: int) -> WindowTokens:
        """Split each sequence into ``windows`` equal runs folded into the batch: (B, N, .) -> (B * w, N / w, .)."""
        return WindowTokens(*(None if t is None else t.reshape(t.shape[0] * windows, -1, t.shape[-1]) for t in self))

    def unfold(self, windows: int) -> WindowTokens:
        """Undo :meth:`fold`."""
        return WindowTokens(*(None if t is None else t.reshape(t.shape[0] // windows, -1, t.shape[-1]) for t in self))


class WindowAttention(nn.Module):
    """Multi-head self-attention over (B, N, C) that exposes its keys and accepts a per-key logit bias."""

    def __init__(self, dim: int, num_heads: int, kernel: str = "sdpa") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kernel = kernel
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values, each (B, heads, N, head dim)."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_bias: Tensor | None = None) -> Tensor:
        """Attention output (B, N, C); ``key_bias`` (B, N) is added to every query's logit for that key before
        the 1/sqrt(head dim) scaling, as in softmax((Q K^T + 1 s^T) / sqrt(d))."""
        batch, heads, tokens, head_dim = q.shape
        mask = None
        if key_bias is not None:
            mask = (key_bias / math.sqrt(head_dim)).to(q.dtype)[:, None, None, :]
        if self.kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            logits = q @ k.transpose(-1, -2) / math.sqrt(head_dim)
            out = (logits if mask is None else logits + mask).softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, heads * head_dim))


class VTMBlock(nn.Module):
    """LayerNorm -> windowed attention (residual) -> dropout -> merge within the window -> Linear -> GELU."""

    def __init__(self, in_dim: int, out_dim: int, num_heads: int, dropout: float, attention: str = "sdpa") -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.attention = WindowAttention(in_dim, num_heads, attention)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(in_dim, out_dim)

    def attend(
        self, state: WindowTokens, key_saliency: nn.Module | None = None, bias_scale: float = 1.0
    ) -> tuple[WindowTokens, Tensor]:
        """Attention step: the new state and the keys (B, heads, N, head dim). With ``key_saliency`` (U_s, the
        auxiliary path) ``bias_scale`` times each key's saliency is added to the attention logits."""
        q, k, v = self.attention.project_qkv(self.norm(state.x))
        key_bias = None
        if key_saliency is not None:
            key_bias = bias_scale * saliency_scores(key_saliency, flatten_heads(k))
        out = self.attention(q, k, v, key_bias)
        return state._replace(x=state.x + self.dropout(out)), k

    def project(self, x: Tensor) -> Tensor:
        """The channel-shrinking Linear and GELU."""
        return F.gelu(self.linear(x))


def flatten_heads(keys: Tensor) -> Tensor:
    """Keys (B, heads, N, head dim) as one vector per token (B, N, C)."""
    return keys.transpose(1, 2).flatten(2)


def saliency_scores(projection: nn.Module, keys: Tensor) -> Tensor:
    """Saliency s = tanh(K U_s) of each token (B, N) from its keys (B, N, C)."""
    return torch.tanh(projection(keys)).squeeze(-1)


def merge_window(
    state: WindowTokens,
    keys: Tensor,
    target_idx: Tensor,
    source_idx: Tensor,
    num_merged: int,
    weighted: bool,
) -> WindowTokens:
    """Merge ``num_merged`` sources into targets per window by key cosine; carry sizes, centrality and motion."""
    reduction = bipartite_soft_matching(keys, num_merged, a_idx=source_idx, b_idx=target_idx)
    x, _ = merge_wavg(reduction, state.x, state.size if weighted else None)
    carried = [state.centrality] if state.motion is None else [state.centrality, state.motion]
    means, _ = merge_wavg(reduction, torch.cat(carried, dim=-1), state.size)
    motion = None if state.motion is None else means[..., 1:2]
    return WindowTokens(x, apply(reduction, state.size), means[..., 0:1], motion)


class VideoTokenMerger(nn.Module):
    """The VTM network (or, with ``config.merge`` False, the unmerged baseline with the same blocks)."""

    def __init__(self, config: VTMConfig) -> None:
        super().__init__()
        self.config = config
        dims = (config.in_channels, *config.block_channels)
        for dim in dims[:-1]:
            if dim % config.num_heads:
                raise ValueError(f"{dim} channels do not divide into num_heads={config.num_heads} heads")
        self.blocks = nn.ModuleList(
            VTMBlock(dims[i], dims[i + 1], config.num_heads, config.dropout, config.attention)
            for i in range(len(config.windows))
        )
        self.head = nn.Linear(dims[-1], config.num_outputs)
        self.saliency = None
        self.aux_blocks = None
        self.aux_head = None
        if config.learnable:
            self.saliency = nn.ModuleList(nn.Linear(dim, 1, bias=False) for dim in dims[:-1])
            self.aux_head = nn.Linear(dims[-1], config.num_outputs)
            if config.aux_weights == "separate":
                self.aux_blocks = copy.deepcopy(self.blocks)

    def initial_state(self, tokens: Tensor, motion: Tensor | None) -> WindowTokens:
        """Flatten (B, T, N, C) frames into one sequence per video with unit sizes, centrality and motion."""
        batch, frames, per_frame, channels = tokens.shape
        self.config.check_frames(frames)
        if channels != self.config.in_channels:
            expected = self.config.in_channels
            raise ValueError(f"tokens have {channels} channels, the model expects in_channels={expected}")
        height, width, prefix = self.config.frame_grid(per_frame)
        centrality = central_mask(height, width, prefix).to(tokens.device, tokens.dtype)
        centrality = centrality.repeat(frames).expand(batch, -1).unsqueeze(-1)
        size = tokens.new_ones(batch, frames * per_frame, 1)
        if motion is not None:
            if motion.shape != tokens.shape[:3]:
                raise ValueError(f"motion has shape {tuple(motion.shape)}, expected {tuple(tokens.shape[:3])}")
            motion = motion.reshape(batch, -1, 1).to(tokens.dtype)
        return WindowTokens(tokens.reshape(batch, -1, channels), size, centrality, motion)

    def run_blocks(self, state: WindowTokens, blocks: nn.ModuleList, frames: int, auxiliary: bool) -> Tensor:
        """The blocks over nested windows, then average pooling: (B, C_out)."""
        config = self.config
        for index, (block, window) in enumerate(zip(blocks, config.windows)):
            windows = frames // window
            state = state.fold(windows)
            saliency = self.saliency[index] if self.saliency is not None else None
            state, keys = block.attend(state, saliency if auxiliary else None, config.saliency_bias_scale)
            if config.merge:
                keys = flatten_heads(keys)
                scores = None if saliency is None else saliency_scores(saliency, keys)
                state = self.merge(state, keys, scores)
            state = state._replace(x=block.project(state.x)).unfold(windows)
        return state.x.mean(dim=1)

    def merge(self, state: WindowTokens, keys: Tensor, saliency: Tensor | None) -> WindowTokens:
        """Choose targets with the configured partition and merge the windows' sources into them."""
        config = self.config
        batch, num_tokens = keys.shape[:2]
        num_targets = count_targets(num_tokens, config.gamma)
        targets = choose_targets(
            config.partition,
            num_targets,
            num_tokens=num_tokens,
            batch=batch,
            device=keys.device,
            centrality=state.centrality.squeeze(-1),
            motion=None if state.motion is None else state.motion.squeeze(-1),
            saliency=saliency,
            sample=self.training,
            replacement=config.sample_with_replacement,
            motion_temperature=config.motion_temperature,
        )
        sources = complement(targets, num_tokens)
        num_merged = int(config.merge_ratio * sources.shape[1])
        return merge_window(state, keys, targets, sources, num_merged, config.weighted_merge)

    def forward(self, tokens: Tensor, motion: Tensor | None = None) -> VTMOutput:
        """Predict from tokens (B, T, N, C) and optional motion (B, T, N)."""
        state = self.initial_state(tokens, motion)
        frames = tokens.shape[1]
        logits = self.head(self.run_blocks(state, self.blocks, frames, auxiliary=False))
        if not (self.training and self.config.learnable):
            return VTMOutput(logits)
        aux_blocks = self.aux_blocks if self.aux_blocks is not None else self.blocks
        aux_logits = self.aux_head(self.run_blocks(state, aux_blocks, frames, auxiliary=True))
        return VTMOutput(logits, aux_logits)


def task_loss(logits: Tensor, target: Tensor, regression: bool) -> Tensor:
    """Cross-entropy for class indices, mean squared error for regression targets."""
    if regression:
        return F.mse_loss(logits.squeeze(-1), target.float())
    return F.cross_entropy(logits, target.long())


def vtm_loss(output: VTMOutput, target: Tensor, regression: bool, aux_weight: float = 1.0) -> Tensor:
    """Task loss of the main head plus ``aux_weight`` times that of the auxiliary head when there is one.

    The paper trains with "the task loss of both heads" without weights; ``aux_weight`` 1 is that sum.
    """
    loss = task_loss(output.logits, target, regression)
    if output.aux_logits is not None:
        loss = loss + aux_weight * task_loss(output.aux_logits, target, regression)
    return loss
