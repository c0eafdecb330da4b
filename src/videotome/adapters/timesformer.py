"""TimeSformer: divided space-time attention, merged per frame with the same r in every frame.

Hugging Face lays TimeSformer's tokens out patch-major: token ``1 + p * frames + t`` is patch p of frame t, after
one class token shared by all frames. The block runs temporal attention over each patch slot's ``frames`` tokens,
then spatial attention within each frame (with a copy of the class token), then the MLP. Merging happens after both
attention residuals and before the MLP, on each frame's own tokens, from the spatial attention's keys.

Modes (``divided=``):

- ``per_frame`` (the paper): each frame matches on its own keys. Slot p of two frames then holds different places,
  and temporal attention still pairs them by slot.
- ``aligned`` (ours): one matching per clip from the frame-averaged keys, the same merges in every frame, so a slot
  holds the same place in every frame and temporal attention keeps comparing like with like.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import TimesformerForVideoClassification, TimesformerModel
from transformers.modeling_outputs import BaseModelOutput, ModelOutput

from ..plan import TokenLayout
from .base import (
    Adapter,
    LayerCall,
    TokenState,
    attend,
    classification_output,
    from_frames,
    to_frames,
    log_size,
    patch_grid,
    reduce_frames,
)


def _qkv(attention: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v (batch, heads, tokens, head dim) of a TimesformerSelfAttention."""
    qkv = attention.qkv(h).unflatten(-1, (3, attention.num_heads, -1))
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return q, k, v


class TimesformerAdapter(Adapter):
    #: the token order: patch-major (token 1 + p * frames + t)
    frame_major = False
    classes = (TimesformerModel, TimesformerForVideoClassification)
    attention_kind = "divided"

    def base(self, model: nn.Module) -> TimesformerModel:
        return model.timesformer if isinstance(model, TimesformerForVideoClassification) else model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        if model.config.attention_type != "divided_space_time":
            raise ValueError(
                f"TimeSformer attention_type={model.config.attention_type!r} is not supported; "
                "expected 'divided_space_time'"
            )
        return self.base(model).encoder.layer

    def layout(self, model: nn.Module) -> TokenLayout:
        config = model.config
        patches = (config.image_size // config.patch_size) ** 2
        return TokenLayout(groups=config.num_frames, tokens_per_group=patches, shared=1)

    def grid(self, model: nn.Module) -> Tensor:
        config = model.config
        side = config.image_size // config.patch_size
        return patch_grid(config.num_frames, side, side, class_token=True, time_major=False)

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.base(model).embeddings(pixel_values)

    def run_original(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x)[0]

    def _attention(
        self, module: nn.Module, h: Tensor, bias: Tensor | None, *, merged_keys: bool
    ) -> tuple[Tensor, Tensor]:
        """A TimeSformerAttention (self-attention + output projection) with a size bias; returns output and keys.

        ``merged_keys``: the keys are a frame's tokens, which merging shortens (see :func:`attend`)."""
        q, k, v = _qkv(module.attention, h)
        attended = attend(
            q,
            k,
            v,
            scale=module.attention.scale,
            log_size=bias,
            implementation="eager",
            dropout=module.attention.attn_drop.p if module.training else 0.0,
            merged_keys=merged_keys,
        )
        return module.output(attended), k

    def layer_forward(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        frames = layer.config.num_frames
        x = state.x
        batch, _, channels = x.shape
        cls, patches = x[:, :1], x[:, 1:]
        slots = patches.shape[1] // frames
        frame_bias = log_size(state.size, call.plan)

        temporal_bias = None
        if frame_bias is not None:
            temporal_bias = frame_bias.unflatten(0, (batch, frames)).transpose(1, 2).flatten(0, 1)
        temporal, _ = self._attention(
            layer.temporal_attention,
            layer.temporal_layernorm(patches.reshape(batch * slots, frames, channels)),
            temporal_bias,
            merged_keys=False,
        )
        temporal = layer.temporal_dense(layer.drop_path(temporal).reshape(batch, slots * frames, channels))
        patches = patches + temporal

        per_frame = to_frames(patches, frames, frame_major=self.frame_major)
        spatial_in = torch.cat([cls.repeat_interleave(frames, dim=0), per_frame], dim=1)
        spatial_bias = None
        if frame_bias is not None:
            spatial_bias = torch.cat([frame_bias.new_zeros(batch * frames, 1), frame_bias], dim=1)
        spatial, keys = self._attention(
            layer.attention, layer.layernorm_before(spatial_in), spatial_bias, merged_keys=True
        )
        spatial = layer.drop_path(spatial)
        cls = cls + spatial[:, :1].unflatten(0, (batch, frames)).mean(dim=1)
        per_frame = per_frame + spatial[:, 1:]
        if call.r > 0:
            metric = keys.mean(dim=1)[:, 1:]
            state = reduce_frames(cls, per_frame, state, metric, call, frames, frame_major=self.frame_major)
            x = state.x
        else:
            x = torch.cat([cls, from_frames(per_frame, frames, frame_major=self.frame_major)], dim=1)
        mlp = layer.output(layer.intermediate(layer.layernorm_after(x)))
        return state._replace(x=x + layer.drop_path(mlp))

    def merge_step(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        frames = layer.config.num_frames
        cls = state.x[:, :1]
        per_frame = to_frames(state.x[:, 1:], frames, frame_major=self.frame_major)
        spatial_in = torch.cat([cls.repeat_interleave(frames, dim=0), per_frame], dim=1)
        _, keys, _ = _qkv(layer.attention.attention, layer.layernorm_before(spatial_in))
        return reduce_frames(cls, per_frame, state, keys.mean(dim=1)[:, 1:], call, frames, frame_major=self.frame_major)

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        base = self.base(model)
        x = base.layernorm(state.x)
        if model is base:
            return BaseModelOutput(last_hidden_state=x)
        return classification_output(model, x[:, 0], labels)
