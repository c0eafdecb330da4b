"""VideoMAE: joint space-time merging across all frames; no class token; size-weighted mean pooling.

Proportional attention is off by default, as in the paper; the mean-pooled head weighs each token by the
patches it holds, so a merged token counts as much as the patches it replaced.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import VideoMAEForVideoClassification, VideoMAEModel
from transformers.modeling_outputs import BaseModelOutput, ModelOutput

from ..plan import TokenLayout
from .base import PreNormBlockAdapter, TokenState, classification_output, patch_grid, project_heads, weighted_mean


class VideoMAEAdapter(PreNormBlockAdapter):
    classes = (VideoMAEModel, VideoMAEForVideoClassification)
    prop_attn_default = False
    protect_first = False

    def base(self, model: nn.Module) -> VideoMAEModel:
        return model.videomae if isinstance(model, VideoMAEForVideoClassification) else model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).encoder.layer

    def layout(self, model: nn.Module) -> TokenLayout:
        config = model.config
        frames = config.num_frames // config.tubelet_size
        return TokenLayout(groups=1, tokens_per_group=frames * (config.image_size // config.patch_size) ** 2)

    def grid(self, model: nn.Module) -> Tensor:
        config = model.config
        side = config.image_size // config.patch_size
        return patch_grid(config.num_frames // config.tubelet_size, side, side, class_token=False)

    def embed(self, model: nn.Module, pixel_values: Tensor, bool_masked_pos: Tensor | None = None) -> Tensor:
        return self.base(model).embeddings(pixel_values, bool_masked_pos)

    def qkv(self, layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor, float, float]:
        attention = layer.attention.attention
        projections = (attention.query, attention.key, attention.value)
        q, k, v = project_heads(h, projections, attention.attention_head_size)
        return q, k, v, attention.scaling, attention.dropout_prob

    def attention_residual(self, layer: nn.Module, attended: Tensor) -> Tensor:
        output = layer.attention.output
        return output.dropout(output.dense(attended))

    def norm1(self, layer: nn.Module) -> nn.Module:
        return layer.layernorm_before

    def mlp_residual(self, layer: nn.Module, x: Tensor) -> Tensor:
        output = layer.output
        return output.dropout(output.dense(layer.intermediate(layer.layernorm_after(x))))

    def config_of(self, layer: nn.Module):
        return layer.attention.attention.config

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        base = self.base(model)
        x = state.x if base.layernorm is None else base.layernorm(state.x)
        if model is base:
            return BaseModelOutput(last_hidden_state=x)
        pooled = x[:, 0] if model.fc_norm is None else model.fc_norm(weighted_mean(x, state.size))
        return classification_output(model, pooled, labels)
