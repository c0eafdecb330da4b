"""The analytic cost of a video-LLM's language model (videotome.vlm.cost) against torch's FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from videotome.vlm.cost import MODELS_7B, QWEN2_7B, LanguageModelShape

_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=96, vocab_size=300)


@pytest.mark.parametrize("kind", ["qwen2", "llama"])
@pytest.mark.parametrize("tokens", [17, 90])
def test_prefill_flops_are_torchs_count(kind: str, tokens: int) -> None:
    # eager attention: torch's counter does not see the CPU kernel SDPA takes for grouped-query attention
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if kind == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(**_TINY, attn_implementation="eager")
    torch.manual_seed(0)
    model = model_class(config).eval()
    ids = torch.randint(0, 300, (1, tokens))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, logits_to_keep=1)
    assert LanguageModelShape.of(config).prefill_flops(tokens) == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_kv_cache_bytes_are_the_caches_size() -> None:
    config = Qwen2Config(**_TINY)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval().to(torch.bfloat16)
    with torch.inference_mode():
        cache = model(input_ids=torch.randint(0, 300, (1, 23)), use_cache=True).past_key_values
    held = sum(layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
               for layer in cache.layers)
    assert LanguageModelShape.of(config).kv_cache_bytes(23, dtype_bytes=2) == held


def test_a_multimodal_config_is_read_through_its_text_config() -> None:
    from transformers import Qwen2_5_VLConfig

    config = Qwen2_5_VLConfig(text_config=dict(_TINY))
    head_dim = getattr(config.get_text_config(), "head_dim", None)
    assert LanguageModelShape.of(config) == LanguageModelShape(**_TINY, head_dim=head_dim)


def test_the_7b_models_visual_tokens() -> None:
    onevision, qwen = MODELS_7B
    assert onevision.visual_tokens(8) == 1569 and onevision.visual_tokens(32) == 6273
    assert onevision.visual_tokens(8, keep=0.25) == 392 + 1
    assert qwen.visual_tokens(8) == 4 * 256 + 2
    assert QWEN2_7B.dim == 128
    with pytest.raises(ValueError, match="frames=7: Qwen2.5-VL-7B .* takes a multiple of 2 frames"):
        qwen.visual_tokens(7)


def test_a_config_without_the_fields_is_refused() -> None:
    from transformers import ViTConfig

    with pytest.raises(TypeError, match=r"ViTConfig lacks \['vocab_size'\]: not a decoder-only"):
        LanguageModelShape.of(ViTConfig())
