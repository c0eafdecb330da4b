"""Tiny video-LLMs with random weights, built from configurations (nothing downloaded), and the inputs their processors
would make: for tests, for ``videotome vlm bench`` and for trying the API without real weights.

:data:`TINY_MODELS` names a builder per supported class; :func:`video_inputs` writes the token sequence the family's
processor writes (text, the video's placeholder tokens and special tokens, left padding for prompts of different
lengths) and the pixel tensors, from the model's own configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .models import is_qwen

#: token ids of the tiny vocabularies (plain text tokens are 3 .. 239)
PAD, VIDEO, IMAGE, VISION_START, VISION_END, TIMESTAMP = 0, 251, 250, 252, 253, 254
VOCAB = 256
_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=VOCAB, max_position_embeddings=8192, pad_token_id=PAD, eos_token_id=2, bos_token_id=1)
_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56,
             patch_size=14, projection_dim=32)


def _llava_onevision() -> nn.Module:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    config = LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model",
                       **{k: v for k, v in _CLIP.items() if k != "projection_dim"}},
        text_config={"model_type": "qwen2", **_TEXT}, image_token_index=IMAGE, video_token_index=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="full")
    return LlavaOnevisionForConditionalGeneration(config)


def _llava_next_video() -> nn.Module:
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    config = LlavaNextVideoConfig(
        vision_config={"model_type": "clip_vision_model", **_CLIP}, text_config={"model_type": "llama", **_TEXT},
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default", spatial_pool_stride=2, image_grid_pinpoints=[[56, 56]])
    return LlavaNextVideoForConditionalGeneration(config)


def _video_llava() -> nn.Module:
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    config = VideoLlavaConfig(
        vision_config={"model_type": "clip_vision_model", **_CLIP}, text_config={"model_type": "llama", **_TEXT},
        image_token_index=IMAGE, video_token_index=VIDEO, vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    return VideoLlavaForConditionalGeneration(config)


def _qwen_vision(**more: object) -> dict[str, object]:
    return dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=_TEXT["hidden_size"],
                patch_size=14, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, **more)


def _qwen_text(sections: list[int]) -> dict[str, object]:
    return {**_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": sections}}


def _qwen_ids() -> dict[str, int]:
    return dict(image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VISION_START,
                vision_end_token_id=VISION_END)


def _qwen2_vl() -> nn.Module:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision = {k: v for k, v in _qwen_vision().items() if k not in ("out_hidden_size", "intermediate_size")}
    vision.update(embed_dim=32, hidden_size=_TEXT["hidden_size"], mlp_ratio=2)
    config = Qwen2VLConfig(vision_config=vision, text_config=_qwen_text([2, 3, 3]), **_qwen_ids())
    return Qwen2VLForConditionalGeneration(config)


def _qwen2_5_vl() -> nn.Module:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(vision_config=_qwen_vision(window_size=56, fullatt_block_indexes=[1]),
                              text_config=_qwen_text([2, 3, 3]), **_qwen_ids())
    return Qwen2_5_VLForConditionalGeneration(config)


def _qwen3_vl() -> nn.Module:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    vision = _qwen_vision(deepstack_visual_indexes=[0], num_position_embeddings=16)
    text = {**_qwen_text([2, 3, 3]), "head_dim": 16}
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_interleaved": True}
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **_qwen_ids())
    return Qwen3VLForConditionalGeneration(config)


TINY_MODELS: dict[str, Callable[[], nn.Module]] = {
    "tiny-llava-onevision": _llava_onevision,
    "tiny-llava-next-video": _llava_next_video,
    "tiny-video-llava": _video_llava,
    "tiny-qwen2-vl": _qwen2_vl,
    "tiny-qwen2.5-vl": _qwen2_5_vl,
    "tiny-qwen3-vl": _qwen3_vl,
}


def tiny_model(name: str, seed: int = 0) -> nn.Module:
    """The tiny model ``name`` (:data:`TINY_MODELS`) with seeded random weights, in eval mode."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; expected one of {sorted(TINY_MODELS)}")
    torch.manual_seed(seed)
    return TINY_MODELS[name]().eval()


def video_token_count(model: nn.Module, frames: int, image_size: int) -> int:
    """How many placeholder tokens the family's processor writes for one video of ``frames`` square frames."""
    config = model.config
    if is_qwen(model):
        vision = config.vision_config
        side = image_size // vision.patch_size
        return (frames // vision.temporal_patch_size) * side * side // vision.spatial_merge_size ** 2
    side = config.vision_config.image_size // config.vision_config.patch_size
    name = type(model).__name__
    if name.startswith("LlavaOnevision"):
        return frames * (-(-side // 2)) ** 2 + 1  # bilinear 2x pooling, then one newline token
    if name.startswith("LlavaNextVideo"):
        return frames * (side // config.spatial_pool_stride) ** 2
    return frames * (side * side + 1)  # VideoLLaVA keeps each frame's class token


def video_inputs(
    model: nn.Module, *, frames: int = 4, batch: int = 1, prompt_lengths: Sequence[int] | None = None,
    after: int = 3, image_size: int = 56, seed: int = 0,
) -> dict[str, Tensor]:
    """Processor-like inputs for ``batch`` different random videos: ``prompt_lengths[b]`` text tokens, the video,
    ``after`` text tokens; shorter prompts are left-padded (attention mask 0), as processors pad for generation."""
    generator = torch.Generator().manual_seed(seed)
    lengths = list(prompt_lengths) if prompt_lengths is not None else [4] * batch
    if len(lengths) != batch:
        raise ValueError(f"prompt_lengths has {len(lengths)} entries for a batch of {batch}")
    count = video_token_count(model, frames, image_size)
    qwen = is_qwen(model)
    video = ([VISION_START] if qwen else []) + [VIDEO] * count + ([VISION_END] if qwen else [])
    if model.config.model_type.startswith("qwen3"):  # a timestamp (text) and its own start/end around each step
        steps = frames // model.config.vision_config.temporal_patch_size
        video = [token for step in range(steps)
                 for token in [TIMESTAMP, 3 + step, VISION_START, *[VIDEO] * (count // steps), VISION_END]]
    rows = [torch.randint(3, 240, (n,), generator=generator).tolist() + video
            + torch.randint(3, 240, (after,), generator=generator).tolist() for n in lengths]
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if qwen:
        vision = model.config.vision_config
        side = image_size // vision.patch_size
        patches = (frames // vision.temporal_patch_size) * side * side
        channels = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
        inputs["pixel_values_videos"] = torch.randn(batch * patches, channels, generator=generator)
        inputs["video_grid_thw"] = torch.tensor([[frames // vision.temporal_patch_size, side, side]] * batch)
        inputs["mm_token_type_ids"] = (input_ids == VIDEO).long() * 2
        if model.config.model_type == "qwen2_5_vl":  # seconds per temporal patch: 2 frames at 4 fps
            inputs["second_per_grid_ts"] = torch.full((batch,), 0.5)
    else:
        inputs["pixel_values_videos"] = torch.randn(batch, frames, 3, image_size, image_size, generator=generator)
    return inputs
