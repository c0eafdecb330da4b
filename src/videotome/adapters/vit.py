"""Image ViTs on frames (ViT, DINOv2) and ViViT, which shares ViT's block: joint merging, class token protected.

An image model sees a video's frames as a batch of images, so each frame merges on its own.
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers import Dinov2Model, ViTModel, VivitForVideoClassification, VivitModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, ModelOutput

from ..plan import TokenLayout
from .base import PreNormBlockAdapter, TokenState, classification_output, patch_grid, project_heads


class ViTBlockAdapter(PreNormBlockAdapter):
    """Blocks laid out as Hugging Face's ViTLayer: layernorm_before, attention, dropout, layernorm_after, mlp."""

    def run_original(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer(x, None)

    def qkv(self, layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor, float, float]:
        attention = layer.attention
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        q, k, v = project_heads(h, projections, attention.head_dim)
        return q, k, v, attention.scaling, attention.attention_dropout

    def attention_residual(self, layer: nn.Module, attended: Tensor) -> Tensor:
        return layer.dropout(layer.attention.o_proj(attended))

    def norm1(self, layer: nn.Module) -> nn.Module:
        return layer.layernorm_before

    def mlp_residual(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.dropout(layer.mlp(layer.layernorm_after(x)))

    def config_of(self, layer: nn.Module):
        return layer.attention.config

    def mlp_modules(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        return (layer.mlp,)

    def head_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        pooler = getattr(self.base(model), "pooler", None)
        return tuple(module for module in (pooler, getattr(model, "classifier", None)) if module is not None)


def _image_grid(config) -> Tensor:
    side = config.image_size // config.patch_size
    return patch_grid(1, side, side, class_token=True)


def _image_layout(config) -> TokenLayout:
    return TokenLayout(groups=1, tokens_per_group=(config.image_size // config.patch_size) ** 2 + 1, protected=1)


class ViTAdapter(ViTBlockAdapter):
    classes = (ViTModel,)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.layers

    def layout(self, model: nn.Module) -> TokenLayout:
        return _image_layout(model.config)

    def grid(self, model: nn.Module) -> Tensor:
        return _image_grid(model.config)

    def embed(self, model: nn.Module, pixel_values: Tensor, interpolate_pos_encoding: bool | None = None) -> Tensor:
        pixel_values = pixel_values.to(model.embeddings.patch_embeddings.projection.weight.dtype)
        return model.embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        x = model.layernorm(state.x)
        pooled = model.pooler(x) if model.pooler is not None else None
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled)


class Dinov2Adapter(ViTBlockAdapter):
    """DINOv2 keeps its LayerScale and drop path around both branches."""

    classes = (Dinov2Model,)

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.encoder.layer

    def layout(self, model: nn.Module) -> TokenLayout:
        return _image_layout(model.config)

    def grid(self, model: nn.Module) -> Tensor:
        return _image_grid(model.config)

    def embed(self, model: nn.Module, pixel_values: Tensor) -> Tensor:
        return model.embeddings(pixel_values)

    def attention_residual(self, layer: nn.Module, attended: Tensor) -> Tensor:
        return layer.drop_path(layer.layer_scale1(layer.attention.o_proj(attended)))

    def norm1(self, layer: nn.Module) -> nn.Module:
        return layer.norm1

    def mlp_residual(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x))))

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        x = model.layernorm(state.x)
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=x[:, 0])


class VivitAdapter(ViTBlockAdapter):
    classes = (VivitModel, VivitForVideoClassification)

    def base(self, model: nn.Module) -> VivitModel:
        return model.vivit if isinstance(model, VivitForVideoClassification) else model

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return self.base(model).layers

    def layout(self, model: nn.Module) -> TokenLayout:
        config = model.config
        frames, height, width = config.tubelet_size
        patches = (config.num_frames // frames) * (config.image_size // height) * (config.image_size // width)
        return TokenLayout(groups=1, tokens_per_group=patches + 1, protected=1)

    def grid(self, model: nn.Module) -> Tensor:
        config = model.config
        frames, height, width = config.tubelet_size
        size = config.image_size
        return patch_grid(config.num_frames // frames, size // height, size // width, class_token=True)

    def embed(self, model: nn.Module, pixel_values: Tensor, interpolate_pos_encoding: bool = False) -> Tensor:
        return self.base(model).embeddings(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        base = self.base(model)
        x = base.layernorm(state.x)
        if model is base:
            pooled = base.pooler(x) if base.pooler is not None else None
            return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled)
        return classification_output(model, x[:, 0], labels)
