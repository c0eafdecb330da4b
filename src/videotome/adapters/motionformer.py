"""Motionformer: trajectory attention over frame-major tokens, merged per frame with the same r in every frame.

Tokens are laid out frame-major: token ``1 + t * count + p`` is patch p of frame t, after one class token. Merging
runs on each frame's own tokens (a reshape of the frame-major sequence, so a merged token never holds patches of two
frames), after the attention residual and before the MLP, from the trajectory attention's keys. Proportional
attention adds log sizes in the class token's attention and in the per-frame spatial softmax.

``divided="aligned"`` matches once per clip on frame-averaged keys, so every frame merges the same places and a
trajectory still compares the same places across frames.
"""

from __future__ import annotations

import torch
from dataclasses import replace

from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from ..models.motionformer import MotionformerForVideoClassification, MotionformerModel
from ..flops import ModelCost
from ..plan import TokenLayout
from .base import Adapter, LayerCall, TokenState, log_size, patch_grid, reduce_frames, to_frames


class MotionformerAdapter(Adapter):
    #: the token order: frame-major (token 1 + t * count + p)
    frame_major = True
    classes = (MotionformerModel, MotionformerForVideoClassification)
    attention_kind = "trajectory"

    def base(self, model: nn.Module) -> MotionformerModel:
        return model.motionformer if isinstance(model, MotionformerForVideoClassification) else model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).blocks

    def layout(self, model: nn.Module) -> TokenLayout:
        config = model.config
        return TokenLayout(groups=config.num_temporal_tokens, tokens_per_group=config.tokens_per_frame, shared=1)

    def grid(self, model: nn.Module) -> Tensor:
        config = model.config
        side = config.image_size // config.patch_size
        return patch_grid(config.num_temporal_tokens, side, side, class_token=True)

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return self.base(model).embed(pixel_values)

    def run_original(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x, layer.config.num_temporal_tokens)

    def patch_projection(self, model: nn.Module) -> nn.Module:
        return self.base(model).patch_embed_3d.proj

    def head_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        base = self.base(model)
        return tuple(child for child in model.children() if child is not base)

    def mlp_modules(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        return (layer.mlp,)

    def cost(self, model: nn.Module) -> ModelCost:
        cost = super().cost(model)
        return replace(cost, block=replace(cost.block, projected_values=model.config.use_projected_values))

    def layer_forward(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        frames = layer.config.num_temporal_tokens
        x = state.x
        batch, _, channels = x.shape
        bias = log_size(state.size, call.plan)
        if bias is not None:
            bias = torch.cat([bias.new_zeros(batch, 1), bias.reshape(batch, -1)], dim=1)
        q, k, v = layer.attn.compute_qkv(layer.norm1(x))
        x = x + layer.drop_path(layer.attn.attend(q, k, v, frames, bias))
        if call.r > 0:
            metric = to_frames(k.mean(dim=1)[:, 1:], frames, frame_major=self.frame_major)
            per_frame = to_frames(x[:, 1:], frames, frame_major=self.frame_major)
            state = reduce_frames(x[:, :1], per_frame, state, metric, call, frames, frame_major=self.frame_major)
            x = state.x
        x = x + layer.drop_path(layer.mlp(layer.norm2(x)))
        return state._replace(x=x)

    def merge_step(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        frames = layer.config.num_temporal_tokens
        _, k, _ = layer.attn.compute_qkv(layer.norm1(state.x))
        metric = to_frames(k.mean(dim=1)[:, 1:], frames, frame_major=self.frame_major)
        per_frame = to_frames(state.x[:, 1:], frames, frame_major=self.frame_major)
        return reduce_frames(state.x[:, :1], per_frame, state, metric, call, frames, frame_major=self.frame_major)

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        base = self.base(model)
        x = base.norm(state.x)
        if model is base:
            return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=x[:, 0])
        return model.classify(x[:, 0], labels)
