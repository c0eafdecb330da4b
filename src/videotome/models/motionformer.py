"""Motionformer: a video transformer with trajectory attention, as a Hugging Face transformers model.

Patrick et al., "Keeping Your Eye on the Ball: Trajectory Attention in Video Transformers", NeurIPS 2021.
Parameter names follow the official PySlowFast implementation (facebookresearch/Motionformer) so that its
released checkpoints load unchanged through `MotionformerForVideoClassification.from_official`.

Token layout everywhere: `[cls] + num_frames * tokens_per_frame`, frame-major, so patch token `p` of temporal
frame `t` sits at index `1 + t * tokens_per_frame + p`. "Frames" inside the transformer are temporal token
positions, i.e. input frames divided by the tubelet size.
"""

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.utils import logging

from ..kernels import softmax_last_dim

logger = logging.get_logger(__name__)

# The published checkpoints all use 64-dimensional heads (ViT-B: 12 heads of 768, ViT-L: 16 heads of 1024);
# the head count is not recoverable from weight shapes, so `infer_config_from_official` assumes this.
OFFICIAL_HEAD_DIM = 64
EPIC_KITCHENS_HEAD_NAMES = ("verb", "noun")


@strict
class MotionformerConfig(PreTrainedConfig):
    r"""
    Configuration of a Motionformer; the defaults give the ViT-B/16 model of the paper (16 frames at 224x224,
    2x16x16 tubelets, 8 temporal x 196 spatial tokens).

    image_size (`int`): Height and width of the input the position table was trained at.
    patch_size (`int`): Spatial side of a tubelet.
    num_frames (`int`): Input frames per clip; the temporal table has `num_frames // tubelet_size` entries.
    tubelet_size (`int`): Temporal side of a tubelet.
    num_channels (`int`): Input channels.
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size: Transformer dimensions.
    hidden_act (`str`): MLP activation (the official model uses exact GELU).
    qkv_bias (`bool`): Bias in the `qkv`, `proj_q` and `proj_kv` projections.
    layer_norm_eps (`float`): LayerNorm epsilon (1e-6 as in the official model).
    hidden_dropout_prob (`float`): Dropout after position embedding, attention projection and MLP.
    attention_probs_dropout_prob (`float`): Dropout on the per-frame spatial attention weights.
    drop_path_rate (`float`): Stochastic depth rate of the last block, linearly increasing from 0.
    head_dropout_prob (`float`): Dropout before the classification head(s).
    initializer_range (`float`): Standard deviation of the truncated normal initialisation.
    use_projected_values (`bool`): Use the second half of `proj_kv` as values of the temporal attention step.
        The published checkpoints were trained with the trajectory tokens themselves as values (a quirk of the
        original code), hence the default `False`.
    head_sizes (`list[int]`, *optional*): Several classification heads, e.g. `[97, 300]` for EPIC-KITCHENS-100,
        built as `head0`, `head1`, ... in this order. When unset, one head `head` of `num_labels` classes is built.
    head_names (`list[str]`, *optional*): Names of the heads in `head_sizes` (e.g. `["verb", "noun"]`), used as
        keys of the output's `head_logits`; defaults to `head0`, `head1`, .... Lists rather than a dict keep the
        order through `config.json`, whose keys are saved sorted.
    """

    model_type = "motionformer"

    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: int = 2
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0
    head_dropout_prob: float | int = 0.0
    initializer_range: float = 0.02
    use_projected_values: bool = False
    head_sizes: list[int] | None = None
    head_names: list[str] | None = None

    def validate_architecture(self) -> None:
        """Check that the dimensions divide evenly."""
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if self.num_frames % self.tubelet_size != 0:
            raise ValueError(
                f"num_frames ({self.num_frames}) must be a multiple of tubelet_size ({self.tubelet_size})."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size}).")
        if self.head_names is not None and len(self.head_names) != len(self.head_sizes or ()):
            raise ValueError(f"head_names {self.head_names} must name each of head_sizes {self.head_sizes}.")

    @property
    def num_temporal_tokens(self) -> int:
        """Temporal positions after tubelet embedding (8 for the default config)."""
        return self.num_frames // self.tubelet_size

    @property
    def tokens_per_frame(self) -> int:
        """Spatial tokens per temporal position at `image_size` (196 for the default config)."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def resolved_head_names(self) -> list[str]:
        """Names of the heads of a multi-head model (`head_names`, or `head0`, `head1`, ...)."""
        return list(self.head_names or [f"head{index}" for index in range(len(self.head_sizes or ()))])


@dataclass
class MotionformerVideoClassifierOutput(ImageClassifierOutput):
    """`ImageClassifierOutput` plus the per-head logits of a multi-head model.

    With `config.head_sizes` set, `logits` is the concatenation of the heads' logits in `head_sizes` order
    (e.g. 97 verb then 300 noun columns) and `head_logits` maps each head name to its own logits; with a single
    head, `head_logits` is None.
    """

    head_logits: dict[str, torch.Tensor] | None = None


class MotionformerDropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample during training."""

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
        return hidden_states * mask / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class MotionformerImagePatchEmbeddings(nn.Module):
    """The 2D patch projection the official model builds but never uses.

    Kept only so that the official checkpoints (which carry `patch_embed.proj`) load without unexpected keys;
    the model tokenises with `MotionformerTubeletEmbeddings`.
    """

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )


class MotionformerTubeletEmbeddings(nn.Module):
    """Cuboid (tubelet) embedding: a Conv3d over `tubelet_size x patch_size x patch_size` blocks."""

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__()
        kernel = (config.tubelet_size, config.patch_size, config.patch_size)
        self.proj = nn.Conv3d(config.num_channels, config.hidden_size, kernel_size=kernel, stride=kernel)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Map (batch, frames, channels, height, width) to frame-major tokens (batch, T * h * w, hidden)."""
        embeddings = self.proj(pixel_values.transpose(1, 2))
        return embeddings.flatten(2).transpose(1, 2)


class MotionformerAttention(nn.Module):
    """Trajectory attention (Patrick et al., 2021, Sec. 3.2).

    The class token attends jointly to all tokens. Every patch query first attends within each frame separately
    (a softmax per frame over that frame's patches), pooling one trajectory token per frame; a second attention
    then runs along this trajectory, with the query taken from the trajectory token at the query's own frame.

    The pieces are separate methods taking explicit tensors so that token-merging code can reuse them:
    `compute_qkv` gives queries/keys/values, `attend` runs the attention on them, and `forward` chains both.
    """

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__()
        hidden_size = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = hidden_size // self.num_heads
        self.scale = self.head_dim**-0.5
        self.use_projected_values = config.use_projected_values

        self.qkv = nn.Linear(hidden_size, hidden_size * 3, bias=config.qkv_bias)
        self.proj_q = nn.Linear(hidden_size, hidden_size, bias=config.qkv_bias)
        self.proj_kv = nn.Linear(hidden_size, hidden_size * 2, bias=config.qkv_bias)
        self.attn_drop = nn.Dropout(config.attention_probs_dropout_prob)
        self.proj = nn.Linear(hidden_size, hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def compute_qkv(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Project (batch, N, hidden) to queries, keys and values, each (batch, heads, N, head_dim)."""
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return query, key, value

    def class_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        size_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain attention of the class token over all N tokens; returns (batch, heads, 1, head_dim)."""
        logits = (query[:, :, :1] * self.scale) @ key.transpose(-2, -1)
        if size_bias is not None:
            logits = logits + size_bias[:, None, None, :].to(logits.dtype)
        return softmax_last_dim(logits) @ value

    def spatial_attention(
        self, query: torch.Tensor, frame_keys: torch.Tensor, frame_values: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Attend from every patch query to each frame's patches separately.

        ``query`` (batch, heads, S, head_dim) holds the S = N - 1 patch queries; ``frame_keys`` and ``frame_values``
        (batch, heads, num_frames, P, head_dim) each frame's P patches (the class token is neither a query nor a key
        here); ``bias`` (batch, 1, num_frames, 1, P), if given, is added to the keys' logits. Returns the trajectory
        tokens, (batch, heads, num_frames, S, head_dim): entry [.., t, i, :] pools frame t's values for query i
        with a softmax over frame t's keys.
        """
        logits = (query * self.scale).unsqueeze(2) @ frame_keys.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias.to(logits.dtype)
        weights = self.attn_drop(softmax_last_dim(logits))
        return weights @ frame_values

    def temporal_attention(self, trajectories: torch.Tensor) -> torch.Tensor:
        """Attend along each query's trajectory over frames; returns (batch, S, hidden).

        `trajectories` is the output of `spatial_attention`. As in the official model, the heads are concatenated
        before `proj_q` and `proj_kv`, and the query is `proj_q` of the trajectory token at the query's own frame.
        The keys `proj_kv(y)[:hidden]` enter only through dot products with that query, so the key weight is
        applied once to the query instead of to all `num_frames` trajectory tokens (same logits, far fewer
        FLOPs); the key bias adds the same logit to every frame and cancels in the softmax. Likewise projected
        values are applied after pooling over frames.
        """
        batch_size, num_heads, num_frames, num_queries, head_dim = trajectories.shape
        hidden_size = num_heads * head_dim
        tokens_per_frame = num_queries // num_frames
        trajectories = trajectories.permute(0, 3, 2, 1, 4).reshape(batch_size, num_queries, num_frames, hidden_size)

        positions = torch.arange(num_queries, device=trajectories.device)
        own_tokens = trajectories[:, positions, positions // tokens_per_frame]
        query = self.proj_q(own_tokens).reshape(batch_size, num_queries, num_heads, head_dim) * self.scale

        key_weight, value_weight = self.proj_kv.weight.reshape(2, num_heads, head_dim, hidden_size).unbind(0)
        query_on_inputs = torch.einsum("bshd,hdc->bshc", query, key_weight)
        weights = softmax_last_dim(torch.einsum("bshc,bsfc->bshf", query_on_inputs, trajectories))

        if not self.use_projected_values:
            head_trajectories = trajectories.reshape(batch_size, num_queries, num_frames, num_heads, head_dim)
            output = torch.einsum("bshf,bsfhd->bshd", weights, head_trajectories)
        else:
            pooled = torch.einsum("bshf,bsfc->bshc", weights, trajectories)
            output = torch.einsum("bshc,hdc->bshd", pooled, value_weight)
            if self.proj_kv.bias is not None:
                output = output + self.proj_kv.bias[hidden_size:].reshape(num_heads, head_dim)
        return output.reshape(batch_size, num_queries, hidden_size)

    def attend(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        num_frames: int,
        size_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Trajectory attention on (batch, heads, N, head_dim) tensors, then `proj`; returns (batch, N, hidden).

        `size_bias` (batch, N), if given, is added to every key's logit in the class-token attention and in the
        per-frame spatial attention (e.g. log token sizes after merging); the temporal step gets none.
        """
        batch_size, num_heads, seq_len, head_dim = query.shape
        if (seq_len - 1) % num_frames != 0:
            raise ValueError(
                f"Expected 1 + num_frames * tokens_per_frame tokens, got {seq_len} tokens for {num_frames} frames."
            )
        cls_output = self.class_attention(query, key, value, size_bias)
        cls_output = cls_output.transpose(1, 2).reshape(batch_size, 1, num_heads * head_dim)
        tokens_per_frame = (seq_len - 1) // num_frames
        frame_shape = (batch_size, num_heads, num_frames, tokens_per_frame, head_dim)
        frame_bias = None
        if size_bias is not None:
            frame_bias = size_bias[:, 1:].reshape(batch_size, 1, num_frames, 1, tokens_per_frame)
        trajectories = self.spatial_attention(
            query[:, :, 1:], key[:, :, 1:].reshape(frame_shape), value[:, :, 1:].reshape(frame_shape), frame_bias
        )
        patch_output = self.temporal_attention(trajectories)
        output = torch.cat((cls_output, patch_output), dim=1)
        return self.proj_drop(self.proj(output))

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, size_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Trajectory attention over `[cls] + num_frames * tokens_per_frame` frame-major tokens."""
        query, key, value = self.compute_qkv(hidden_states)
        return self.attend(query, key, value, num_frames, size_bias)


class MotionformerMLP(nn.Module):
    """The block's feed-forward network: fc1, activation, fc2."""

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.drop(self.act(self.fc1(hidden_states)))
        return self.drop(self.fc2(hidden_states))


class MotionformerLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), both with drop path."""

    def __init__(self, config: MotionformerConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = MotionformerAttention(config)
        self.drop_path = MotionformerDropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MotionformerMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, size_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the block to (batch, 1 + num_frames * tokens_per_frame, hidden) frame-major tokens."""
        hidden_states = hidden_states + self.drop_path(self.attn(self.norm1(hidden_states), num_frames, size_bias))
        return hidden_states + self.drop_path(self.mlp(self.norm2(hidden_states)))


class MotionformerPreTrainedModel(PreTrainedModel):
    """Weight initialisation and loading plumbing shared by the Motionformer models."""

    config: MotionformerConfig
    config_class = MotionformerConfig
    base_model_prefix = "motionformer"
    main_input_name = "pixel_values"
    input_modalities = ("video",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["MotionformerLayer"]
    # Trajectory attention is implemented here; no SDPA / flash / flex kernel computes it.
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Truncated-normal linear/conv weights, zero biases, unit LayerNorms, as in the official model."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MotionformerModel):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)
            init.zeros_(module.temp_embed)


class MotionformerModel(MotionformerPreTrainedModel):
    """The Motionformer backbone: tubelet embedding, separable position embeddings, trajectory blocks, norm.

    Parameters sit directly on this module under the official names (`cls_token`, `pos_embed`, `temp_embed`,
    `patch_embed_3d`, `blocks`, `norm`, plus the unused `patch_embed`).
    """

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__(config)
        grid = config.image_size // config.patch_size
        self.patch_embed = MotionformerImagePatchEmbeddings(config)
        self.patch_embed_3d = MotionformerTubeletEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, config.hidden_size))
        self.temp_embed = nn.Parameter(torch.zeros(1, config.num_temporal_tokens, config.hidden_size))
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.blocks = nn.ModuleList([MotionformerLayer(config, rate) for rate in drop_path_rates])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.patch_embed_3d

    @property
    def num_temporal_tokens(self) -> int:
        """The `num_frames` argument the blocks expect: temporal positions after tubelet embedding."""
        return self.config.num_temporal_tokens

    def interpolate_pos_embed(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """The spatial table (1, 1 + grid_height * grid_width, hidden) for another patch grid.

        The patch entries are resized bicubically on their square grid (as the official model does for crops
        other than 224); the class entry is kept.
        """
        table_grid = math.isqrt(self.pos_embed.shape[1] - 1)
        if (grid_height, grid_width) == (table_grid, table_grid):
            return self.pos_embed
        hidden_size = self.pos_embed.shape[-1]
        patch_table = self.pos_embed[:, 1:].reshape(1, table_grid, table_grid, hidden_size).permute(0, 3, 1, 2)
        patch_table = F.interpolate(
            patch_table.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False
        ).to(self.pos_embed.dtype)
        patch_table = patch_table.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, hidden_size)
        return torch.cat((self.pos_embed[:, :1], patch_table), dim=1)

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tokenise (batch, frames, channels, height, width) video and add the separable position embeddings.

        Returns (batch, 1 + T * h * w, hidden): the class token, then frame-major patch tokens, each carrying
        spatial table entry p plus temporal table entry t.
        """
        batch_size, num_frames, _, height, width = pixel_values.shape
        if num_frames != self.config.num_frames:
            raise ValueError(
                f"Expected {self.config.num_frames} frames per clip (config.num_frames), got {num_frames}."
            )
        patch_size = self.config.patch_size
        grid_height, grid_width = height // patch_size, width // patch_size
        pixel_values = pixel_values.to(self.patch_embed_3d.proj.weight.dtype)
        tokens = self.patch_embed_3d(pixel_values)

        spatial = self.interpolate_pos_embed(grid_height, grid_width)
        num_temporal = self.temp_embed.shape[1]
        patch_pos = spatial[:, 1:].repeat(1, num_temporal, 1)
        patch_pos = patch_pos + self.temp_embed.repeat_interleave(grid_height * grid_width, dim=1)
        position_embeddings = torch.cat((spatial[:, :1], patch_pos), dim=1)

        cls_tokens = self.cls_token.expand(batch_size, -1, -1)
        embeddings = torch.cat((cls_tokens, tokens), dim=1) + position_embeddings
        return self.pos_drop(embeddings)

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling | tuple[torch.Tensor, ...]:
        """Encode a clip; `pooler_output` is the normalised class token (the head's input).

        `hidden_states`, when requested, holds the embedding output and each block's (un-normalised) output.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict

        hidden_states = self.embed(pixel_values)
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        for block in self.blocks:
            hidden_states = block(hidden_states, self.num_temporal_tokens)
            if output_hidden_states:
                all_hidden_states = (*all_hidden_states, hidden_states)

        sequence_output = self.norm(hidden_states)
        pooled_output = sequence_output[:, 0]
        if not return_dict:
            return tuple(v for v in (sequence_output, pooled_output, all_hidden_states) if v is not None)
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled_output, hidden_states=all_hidden_states
        )


class MotionformerForVideoClassification(MotionformerPreTrainedModel):
    """Motionformer with a linear head on the normalised class token.

    One head `head` over `config.num_labels` classes, or several heads `head0`, `head1`, ... sized by
    `config.head_sizes` (EPIC-KITCHENS-100: verb and noun). The outputs are logits; the official model applies a
    softmax in eval mode, which is left to the caller here.
    """

    def __init__(self, config: MotionformerConfig) -> None:
        super().__init__(config)
        self.motionformer = MotionformerModel(config)
        self.head_drop = nn.Dropout(config.head_dropout_prob)
        if config.head_sizes:
            for index, size in enumerate(config.head_sizes):
                self.add_module(f"head{index}", nn.Linear(config.hidden_size, size))
        else:
            self.head = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> MotionformerVideoClassifierOutput | tuple[torch.Tensor, ...]:
        """Classify (batch, frames, channels, height, width) clips.

        `labels`: (batch,) class indices for a single head, or (batch, num_heads) indices for several heads,
        whose loss is the sum of the heads' cross-entropies.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.motionformer(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        result = self.classify(outputs.pooler_output, labels)
        result.hidden_states = outputs.hidden_states
        return result if return_dict else result.to_tuple()

    def classify(
        self, pooled_output: torch.Tensor, labels: torch.Tensor | None = None
    ) -> MotionformerVideoClassifierOutput:
        """The heads (and the loss, given labels) on the normalised class token, (batch, hidden)."""
        features = self.head_drop(pooled_output)
        head_logits = None
        if self.config.head_sizes:
            head_logits = {
                name: getattr(self, f"head{index}")(features)
                for index, name in enumerate(self.config.resolved_head_names)
            }
            logits = torch.cat(list(head_logits.values()), dim=-1)
        else:
            logits = self.head(features)

        loss = None
        if labels is not None:
            if head_logits is not None:
                loss = sum(
                    F.cross_entropy(head_output, labels[:, index])
                    for index, head_output in enumerate(head_logits.values())
                )
            else:
                loss = self.loss_function(labels, logits, self.config)
        return MotionformerVideoClassifierOutput(loss=loss, logits=logits, head_logits=head_logits)

    @classmethod
    def from_official(
        cls,
        checkpoint_path: str | Path,
        config: MotionformerConfig | None = None,
        output_loading_info: bool = False,
    ) -> "MotionformerForVideoClassification | tuple[MotionformerForVideoClassification, dict[str, list[str]]]":
        """Build a model from an official PySlowFast `.pyth` checkpoint.

        The file is read with `torch.load(weights_only=True)`; its `model_state` keys (optionally prefixed
        `module.`) are mapped onto this model's names. Without `config`, one is inferred from the weight shapes
        (see `infer_config_from_official`). Missing keys (this model's names) and unexpected keys (the
        checkpoint's names) are logged as a warning and, with `output_loading_info=True`, returned as
        `{"missing_keys": [...], "unexpected_keys": [...]}` next to the model, like `from_pretrained`. The model
        is returned in eval mode.
        """
        official_state = load_official_state_dict(checkpoint_path)
        if config is None:
            config = infer_config_from_official(official_state)
        model = cls(config)
        official_names = {official_to_hf_key(key): key for key in official_state}
        state_dict = {name: official_state[key] for name, key in official_names.items()}
        try:
            result = model.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:
            raise ValueError(f"Checkpoint {checkpoint_path} does not fit the given config: {error}") from error
        loading_info = {
            "missing_keys": list(result.missing_keys),
            "unexpected_keys": [official_names[name] for name in result.unexpected_keys],
        }
        if loading_info["missing_keys"] or loading_info["unexpected_keys"]:
            logger.warning(
                f"Loading {checkpoint_path}: missing keys {loading_info['missing_keys']}, "
                f"unexpected keys {loading_info['unexpected_keys']}."
            )
        model.eval()
        if output_loading_info:
            return model, loading_info
        return model


def official_to_hf_key(key: str) -> str:
    """Map an official checkpoint key to `MotionformerForVideoClassification`'s name for it.

    Heads (`head`, `head0`, ...) stay at the top; everything else moves under the `motionformer` backbone.
    A DataParallel `module.` prefix is removed first.
    """
    key = key.removeprefix("module.")
    if re.match(r"head\d*\.", key):
        return key
    return f"{MotionformerPreTrainedModel.base_model_prefix}.{key}"


def load_official_state_dict(checkpoint_path: str | Path) -> dict[str, torch.Tensor]:
    """Read the `model_state` tensors of a PySlowFast checkpoint without unpickling arbitrary objects."""
    path = Path(checkpoint_path)
    if not path.is_file():
        raise FileNotFoundError(f"No Motionformer checkpoint at {path}.")
    expected = "a PySlowFast checkpoint saved with torch.save: a dict whose 'model_state' maps names to tensors"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load reports malformed files through many exception types
        raise ValueError(f"{path} is not {expected} (loading with weights_only=True failed: {error!r}).") from error
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model_state"), Mapping):
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path} is not {expected}; found {found}.")
    state = checkpoint["model_state"]
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise ValueError(f"{path} is not {expected}; 'model_state' holds entries that are not named tensors.")
    return dict(state)


def infer_config_from_official(state_dict: Mapping[str, torch.Tensor]) -> MotionformerConfig:
    """Infer the architecture of an official checkpoint from its weight shapes.

    The head count is not visible in the weights; 64-dimensional heads are assumed, as in all published models.
    Two heads `head0`/`head1` are named verb and noun (EPIC-KITCHENS-100).
    """
    state = {key.removeprefix("module."): value for key, value in state_dict.items()}
    try:
        hidden_size = state["cls_token"].shape[-1]
        tubelet_weight = state["patch_embed_3d.proj.weight"]
        pos_len = state["pos_embed"].shape[1]
        num_temporal = state["temp_embed"].shape[1]
        intermediate_size = state["blocks.0.mlp.fc1.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"Not a Motionformer state dict: missing {error}.") from error
    _, num_channels, tubelet_size, patch_size, _ = tubelet_weight.shape
    num_layers = 1 + max(int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key)))
    head_indices = sorted(int(match.group(1)) for key in state if (match := re.fullmatch(r"head(\d+)\.weight", key)))
    if head_indices:
        head_options = {"head_sizes": [state[f"head{index}.weight"].shape[0] for index in head_indices]}
        if len(head_indices) == 2:
            head_options["head_names"] = list(EPIC_KITCHENS_HEAD_NAMES)
    else:
        head_options = {"num_labels": state["head.weight"].shape[0] if "head.weight" in state else 0}
    return MotionformerConfig(
        image_size=math.isqrt(pos_len - 1) * patch_size,
        patch_size=patch_size,
        num_frames=num_temporal * tubelet_size,
        tubelet_size=tubelet_size,
        num_channels=num_channels,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=max(1, hidden_size // OFFICIAL_HEAD_DIM),
        intermediate_size=intermediate_size,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        **head_options,
    )


__all__ = [
    "MotionformerAttention",
    "MotionformerConfig",
    "MotionformerForVideoClassification",
    "MotionformerLayer",
    "MotionformerModel",
    "MotionformerPreTrainedModel",
    "MotionformerVideoClassifierOutput",
    "infer_config_from_official",
    "load_official_state_dict",
    "official_to_hf_key",
]
