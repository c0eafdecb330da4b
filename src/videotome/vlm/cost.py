"""Analytic cost of a video-LLM's language model: prefill FLOPs and KV-cache bytes, against the visual tokens kept.

Counted as :mod:`videotome.flops` counts (a multiply-add is 2 FLOPs; only matrix products count, as torch's FLOP
counter counts them): per decoder layer the query, key, value and output projections (keys and values with
grouped-query attention's fewer heads), the attention scores and their weighted values over the whole sequence (no
halving for the causal mask: the counter counts the full product too), and the SwiGLU MLP's three projections; the
language-model head once, for the one token whose logits a prefill needs (``generate`` asks for the last position
only). The KV cache holds, per layer, a key and a value of ``kv_heads x head_dim`` per token.

:data:`MODELS_7B` holds the published shapes of two 7B video-LLMs, typed in (nothing is downloaded), so
``videotome vlm bench`` can state what a reduction saves at their size.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..flops import matmul
from .reduce import budget


@dataclass(frozen=True)
class LanguageModelShape:
    """What the count needs of a decoder-only language model (the fields of a Hugging Face text config)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    head_dim: int | None = None

    @classmethod
    def of(cls, config: object) -> LanguageModelShape:
        """The shape of ``config``: a text config, or a multimodal config whose text config is read."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        names = [name for name in cls.__dataclass_fields__ if name not in ("head_dim", "num_key_value_heads")]
        missing = [name for name in names if getattr(text, name, None) is None]
        if missing:
            raise TypeError(f"{type(text).__name__} lacks {missing}: not a decoder-only language model's config")
        kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads  # no GQA: as many as queries
        values = {name: getattr(text, name) for name in names} | {"num_key_value_heads": kv}
        return cls(**values, head_dim=getattr(text, "head_dim", None))

    @property
    def dim(self) -> int:
        """Channels per attention head."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def layer_flops(self, tokens: int) -> int:
        """One decoder layer's FLOPs over a prefill of ``tokens`` tokens."""
        c, d = self.hidden_size, self.dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        projections = matmul(tokens, c, q + 2 * kv) + matmul(tokens, q, c)
        attention = 2 * self.num_attention_heads * matmul(tokens, d, tokens)
        return projections + attention + 3 * matmul(tokens, c, self.intermediate_size)

    def prefill_flops(self, tokens: int) -> int:
        """The language model's FLOPs to read ``tokens`` tokens and give the next token's logits."""
        return self.num_hidden_layers * self.layer_flops(tokens) + matmul(1, self.hidden_size, self.vocab_size)

    def kv_cache_bytes(self, tokens: int, dtype_bytes: int = 2) -> int:
        """Bytes of the key-value cache after ``tokens`` tokens (``dtype_bytes`` 2 for bfloat16 / float16)."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.dim * tokens * dtype_bytes


@dataclass(frozen=True)
class VideoLLMShape:
    """A video-LLM as the count sees it: its language model, and the visual tokens a video of some frames makes.

    ``frames_per_group`` input frames make one group of ``tokens_per_group`` visual tokens (2 for Qwen's temporal
    patches); ``extra`` special tokens stay whatever is kept (LLaVA-OneVision's one newline after the video, Qwen's
    vision start and end).
    """

    name: str
    language_model: LanguageModelShape
    tokens_per_group: int
    frames_per_group: int = 1
    extra: int = 0

    def visual_tokens(self, frames: int, keep: float = 1.0) -> int:
        """Visual tokens of a ``frames``-frame video that reach the language model with ``keep`` of them kept."""
        if frames % self.frames_per_group:
            raise ValueError(f"frames={frames}: {self.name} takes a multiple of {self.frames_per_group} frames")
        return budget(self.tokens_per_group, frames // self.frames_per_group, keep) + self.extra


#: Qwen2-7B's language model (config.json of Qwen/Qwen2-7B-Instruct and of llava-hf/llava-onevision-qwen2-7b-ov-hf's
#: text_config), which Qwen2.5-VL-7B-Instruct's text model shares (its config.json: the same sizes)
QWEN2_7B = LanguageModelShape(
    hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
    intermediate_size=18944, vocab_size=152064,
)

#: LLaVA-OneVision-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf): SigLIP at 384 px, 14 px patches, 27 x 27 tokens a
#: frame pooled 2 x 2 (bilinear, rounded up) to 14 x 14 = 196, one newline token after the whole video (8 frames:
#: 1569 tokens). Qwen2.5-VL-7B (Qwen/Qwen2.5-VL-7B-Instruct), assuming frames resized to 448 x 448: 14 px patches,
#: 2 frames a temporal patch, the merger joining 2 x 2 patches, so 16 x 16 = 256 tokens per 2 frames, between
#: <|vision_start|> and <|vision_end|>.
MODELS_7B = (
    VideoLLMShape("LLaVA-OneVision-7B", QWEN2_7B, tokens_per_group=196, extra=1),
    VideoLLMShape("Qwen2.5-VL-7B (448 px)", QWEN2_7B, tokens_per_group=256, frames_per_group=2, extra=2),
)


def analytic_rows(
    models: tuple[VideoLLMShape, ...] = MODELS_7B, frames: tuple[int, ...] = (8, 32, 64),
    keeps: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125), text_tokens: int = 64,
) -> list[dict[str, object]]:
    """Each model's prefill FLOPs and bfloat16 KV cache over a video and ``text_tokens`` of prompt, per frame count
    and kept share, with the ratio to keeping everything."""
    rows = []
    for model in models:
        for count in frames:
            full = model.language_model.prefill_flops(model.visual_tokens(count) + text_tokens)
            for keep in keeps:
                tokens = model.visual_tokens(count, keep) + text_tokens
                flops = model.language_model.prefill_flops(tokens)
                rows.append({"model": model.name, "frames": count, "keep": keep, "tokens": tokens,
                             "tflops": flops / 1e12, "flop_ratio": flops / full,
                             "kv_cache_mib": model.language_model.kv_cache_bytes(tokens) / 2**20})
    return rows
