"""Tests of the Motionformer model: layout, trajectory attention, official checkpoint loading, serialisation."""

import math
import pickle
from pathlib import Path

import pytest
import torch

from videotome.models import (
    MotionformerAttention,
    MotionformerConfig,
    MotionformerForVideoClassification,
    MotionformerLayer,
    MotionformerModel,
    infer_config_from_official,
    official_to_hf_key,
)

BATCH = 2


def tiny_config(**overrides) -> MotionformerConfig:
    """4 frames of 32x32 with 2x16x16 tubelets: 2 temporal x 4 spatial tokens, hidden 32, 2 layers, 2 heads."""
    options = dict(
        image_size=32,
        patch_size=16,
        num_frames=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=5,
    )
    options.update(overrides)
    return MotionformerConfig(**options)


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (the default init zeroes the temporal table and the biases)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return module.eval()


def video(config: MotionformerConfig, height: int | None = None, width: int | None = None) -> torch.Tensor:
    height = height or config.image_size
    width = width or config.image_size
    generator = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, config.num_frames, config.num_channels, height, width, generator=generator)


def official_parameter_names(num_layers: int, heads: tuple[str, ...] = ("head",)) -> set[str]:
    """The state-dict keys of the official PySlowFast Motionformer (trajectory attention, separate pos. embed)."""
    names = {
        "cls_token",
        "pos_embed",
        "temp_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "patch_embed_3d.proj.weight",
        "patch_embed_3d.proj.bias",
        "norm.weight",
        "norm.bias",
    }
    for head in heads:
        names |= {f"{head}.weight", f"{head}.bias"}
    block_parts = ("norm1", "attn.qkv", "attn.proj_q", "attn.proj_kv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    for index in range(num_layers):
        for part in block_parts:
            names |= {f"blocks.{index}.{part}.weight", f"blocks.{index}.{part}.bias"}
    return names


def write_official_checkpoint(model: MotionformerForVideoClassification, path: Path, prefix: str = "") -> dict:
    """Save `model`'s weights as PySlowFast does: official names under `model_state`, next to training state."""
    model_state = {
        prefix + key.removeprefix("motionformer."): tensor.clone() for key, tensor in model.state_dict().items()
    }
    torch.save({"epoch": 30, "model_state": model_state, "optimizer_state": {}, "cfg": "VIT:\n  DEPTH: 2\n"}, path)
    return model_state


# Shapes and parameter layout


def test_forward_shapes_single_head():
    config = tiny_config()
    model = MotionformerForVideoClassification(config).eval()
    pixel_values = video(config)

    backbone_output = model.motionformer(pixel_values, output_hidden_states=True)
    assert backbone_output.last_hidden_state.shape == (BATCH, 1 + 2 * 4, 32)
    assert backbone_output.pooler_output.shape == (BATCH, 32)
    assert len(backbone_output.hidden_states) == config.num_hidden_layers + 1

    output = model(pixel_values, labels=torch.tensor([0, 4]))
    assert output.logits.shape == (BATCH, 5)
    assert output.head_logits is None
    assert output.loss.ndim == 0

    as_tuple = model(pixel_values, return_dict=False)
    assert torch.equal(as_tuple[0], output.logits)


def test_forward_shapes_two_heads():
    config = tiny_config(head_sizes=[3, 4], head_names=["verb", "noun"])
    model = MotionformerForVideoClassification(config).eval()
    assert not hasattr(model, "head")

    output = model(video(config), labels=torch.tensor([[0, 3], [2, 1]]))
    assert output.logits.shape == (BATCH, 3 + 4)
    assert list(output.head_logits) == ["verb", "noun"]
    assert torch.equal(output.logits, torch.cat([output.head_logits["verb"], output.head_logits["noun"]], dim=-1))
    assert output.loss.ndim == 0


def test_base_config_parameter_names_match_official():
    config = MotionformerConfig(num_labels=400)
    assert (config.num_temporal_tokens, config.tokens_per_frame, config.layer_norm_eps) == (8, 196, 1e-6)
    with torch.device("meta"):
        model = MotionformerForVideoClassification(config)
        epic = MotionformerForVideoClassification(MotionformerConfig(head_sizes=[97, 300]))
    state = model.state_dict()

    official = official_parameter_names(12)
    assert set(state) == {official_to_hf_key(name) for name in official}
    assert set(model.motionformer.state_dict()) == official - {"head.weight", "head.bias"}
    epic_official = official_parameter_names(12, heads=("head0", "head1"))
    assert set(epic.state_dict()) == {official_to_hf_key(name) for name in epic_official}
    assert epic.head0.out_features == 97 and epic.head1.out_features == 300

    assert state["motionformer.pos_embed"].shape == (1, 197, 768)
    assert state["motionformer.temp_embed"].shape == (1, 8, 768)
    assert state["motionformer.patch_embed_3d.proj.weight"].shape == (768, 3, 2, 16, 16)
    assert state["motionformer.blocks.0.attn.proj_kv.weight"].shape == (2 * 768, 768)
    assert state["head.weight"].shape == (400, 768)


def test_official_key_mapping():
    assert official_to_hf_key("module.blocks.3.attn.proj_q.weight") == "motionformer.blocks.3.attn.proj_q.weight"
    assert official_to_hf_key("cls_token") == "motionformer.cls_token"
    assert official_to_hf_key("module.head.bias") == "head.bias"
    assert official_to_hf_key("head1.weight") == "head1.weight"


# Trajectory attention


def naive_trajectory_attention(
    attention: MotionformerAttention,
    hidden_states: torch.Tensor,
    num_frames: int,
    size_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Trajectory attention written query by query, head by head, frame by frame."""
    batch_size, seq_len, hidden_size = hidden_states.shape
    num_heads = attention.num_heads
    head_dim = hidden_size // num_heads
    scale = head_dim**-0.5
    per_frame = (seq_len - 1) // num_frames
    bias = torch.zeros(batch_size, seq_len, dtype=hidden_states.dtype) if size_bias is None else size_bias
    query, key, value = attention.qkv(hidden_states).split(hidden_size, dim=-1)
    output = torch.zeros_like(hidden_states)

    def pool(b: int, i: int, head: slice, keys: list[int]) -> torch.Tensor:
        logits = torch.stack([query[b, i, head] @ key[b, j, head] * scale + bias[b, j] for j in keys])
        weights = logits.softmax(dim=0)
        return sum(weight * value[b, j, head] for weight, j in zip(weights, keys, strict=True))

    for b in range(batch_size):
        heads = [slice(h * head_dim, (h + 1) * head_dim) for h in range(num_heads)]
        for head in heads:
            output[b, 0, head] = pool(b, 0, head, list(range(seq_len)))
        for i in range(1, seq_len):
            trajectory = torch.zeros(num_frames, hidden_size, dtype=hidden_states.dtype)
            for head in heads:
                for frame in range(num_frames):
                    frame_keys = list(range(1 + frame * per_frame, 1 + (frame + 1) * per_frame))
                    trajectory[frame, head] = pool(b, i, head, frame_keys)
            own_frame = (i - 1) // per_frame
            query2 = attention.proj_q(trajectory[own_frame])
            key2, value2 = attention.proj_kv(trajectory).split(hidden_size, dim=-1)
            if not attention.use_projected_values:
                value2 = trajectory
            for head in heads:
                weights = (torch.stack([query2[head] @ key2[t, head] for t in range(num_frames)]) * scale).softmax(0)
                output[b, i, head] = sum(weights[t] * value2[t, head] for t in range(num_frames))
    return attention.proj(output)


def tiny_attention(use_projected_values: bool = False, seed: int = 0) -> MotionformerAttention:
    config = tiny_config(hidden_size=16, use_projected_values=use_projected_values)
    return randomize(MotionformerAttention(config), seed).double()


@pytest.mark.parametrize("use_projected_values", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_trajectory_attention_matches_naive_loop(use_projected_values: bool, with_bias: bool):
    attention = tiny_attention(use_projected_values)
    num_frames, per_frame = 3, 4  # not the config's grid: the layout is derived from N and num_frames
    hidden_states = torch.randn(BATCH, 1 + num_frames * per_frame, 16, dtype=torch.float64)
    size_bias = torch.rand(BATCH, hidden_states.shape[1], dtype=torch.float64).log1p() if with_bias else None

    with torch.no_grad():
        expected = naive_trajectory_attention(attention, hidden_states, num_frames, size_bias)
        actual = attention(hidden_states, num_frames, size_bias)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_compute_qkv_layout_and_forward_composition():
    attention = tiny_attention()
    hidden_states = torch.randn(BATCH, 1 + 2 * 3, 16, dtype=torch.float64)
    query, key, value = attention.compute_qkv(hidden_states)
    assert query.shape == key.shape == value.shape == (BATCH, 2, 7, 8)
    # Head h of the keys is the h-th slice of the key third of `qkv`.
    torch.testing.assert_close(key[:, 1], attention.qkv(hidden_states)[..., 16 + 8 : 16 + 16])
    assert torch.equal(attention(hidden_states, 2), attention.attend(query, key, value, 2))

    with pytest.raises(ValueError, match="tokens"):
        attention.attend(query[:, :, :6], key[:, :, :6], value[:, :, :6], 2)


def test_value_variants_agree_with_identity_value_projection():
    original, projected = tiny_attention(False), tiny_attention(True)
    with torch.no_grad():
        projected.proj_kv.weight[16:] = torch.eye(16, dtype=torch.float64)
        projected.proj_kv.bias[16:] = 0.0
        original.load_state_dict(projected.state_dict())
    hidden_states = torch.randn(BATCH, 1 + 2 * 4, 16, dtype=torch.float64)
    torch.testing.assert_close(original(hidden_states, 2), projected(hidden_states, 2), rtol=1e-12, atol=1e-12)


def test_value_variants_differ_only_in_patch_rows():
    original, projected = tiny_attention(False), tiny_attention(True)
    projected.load_state_dict(original.state_dict())
    hidden_states = torch.randn(BATCH, 1 + 2 * 4, 16, dtype=torch.float64)
    original_output, projected_output = original(hidden_states, 2), projected(hidden_states, 2)
    assert torch.equal(original_output[:, 0], projected_output[:, 0])
    assert not torch.allclose(original_output[:, 1:], projected_output[:, 1:])


def test_zero_size_bias_is_bit_identical():
    torch.manual_seed(0)
    config = tiny_config()
    layer = randomize(MotionformerLayer(config))
    hidden_states = torch.randn(BATCH, 1 + 2 * 4, 32)
    zeros = torch.zeros(BATCH, hidden_states.shape[1])
    assert torch.equal(layer(hidden_states, 2), layer(hidden_states, 2, size_bias=zeros))
    assert not torch.equal(layer(hidden_states, 2), layer(hidden_states, 2, size_bias=torch.rand_like(zeros)))


def test_size_bias_is_proportional_attention():
    """A token carrying log(2) behaves like two identical copies of it within its frame."""
    attention = tiny_attention()
    num_frames = 3
    merged = torch.randn(BATCH, 1 + num_frames, 16, dtype=torch.float64)
    duplicated = torch.cat([merged[:, :1], merged[:, 1:].repeat_interleave(2, dim=1)], dim=1)
    size_bias = torch.full((BATCH, 1 + num_frames), math.log(2.0), dtype=torch.float64)
    size_bias[:, 0] = 0.0

    merged_output = attention(merged, num_frames, size_bias)
    duplicated_output = attention(duplicated, num_frames)
    torch.testing.assert_close(merged_output, duplicated_output[:, [0, 1, 3, 5]], rtol=1e-10, atol=1e-10)


# Embeddings


def test_position_table_interpolation_for_other_crops():
    config = tiny_config()
    model = randomize(MotionformerModel(config))
    assert model.interpolate_pos_embed(2, 2) is model.pos_embed
    table = model.interpolate_pos_embed(3, 3)
    assert table.shape == (1, 1 + 9, 32)
    assert torch.equal(table[:, 0], model.pos_embed[:, 0])

    output = model(video(config, 48, 48))
    assert output.last_hidden_state.shape == (BATCH, 1 + model.num_temporal_tokens * 9, 32)
    assert model(video(config, 32, 48)).last_hidden_state.shape == (BATCH, 1 + 2 * 6, 32)


def test_separable_position_embeddings_layout():
    config = tiny_config()
    model = randomize(MotionformerModel(config))
    pixel_values = torch.zeros(1, 4, 3, 32, 32)
    embeddings = model.embed(pixel_values)
    bias = model.patch_embed_3d.proj.bias
    assert torch.allclose(embeddings[0, 0], model.cls_token[0, 0] + model.pos_embed[0, 0])
    for frame in range(2):
        for patch in range(4):
            expected = bias + model.pos_embed[0, 1 + patch] + model.temp_embed[0, frame]
            torch.testing.assert_close(embeddings[0, 1 + frame * 4 + patch], expected)


def test_wrong_frame_count_is_rejected():
    config = tiny_config()
    model = MotionformerModel(config)
    with pytest.raises(ValueError, match="frames"):
        model(torch.zeros(1, 6, 3, 32, 32))


# Official checkpoints


@pytest.mark.parametrize("prefix", ["", "module."])
def test_from_official_round_trip(tmp_path: Path, prefix: str):
    # 64-dimensional heads, so that the inferred config matches this one exactly.
    config = tiny_config(hidden_size=128, num_attention_heads=2, intermediate_size=96, num_labels=7)
    reference = randomize(MotionformerForVideoClassification(config))
    path = tmp_path / "checkpoint_epoch_00030.pyth"
    write_official_checkpoint(reference, path, prefix)

    loaded, info = MotionformerForVideoClassification.from_official(path, output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert not loaded.training
    for field in ("image_size", "patch_size", "num_frames", "tubelet_size", "hidden_size", "num_attention_heads"):
        assert getattr(loaded.config, field) == getattr(config, field)
    assert loaded.config.num_labels == 7 and not loaded.config.use_projected_values

    pixel_values = video(config)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, reference(pixel_values).logits)


def test_from_official_two_heads(tmp_path: Path):
    config = tiny_config(head_sizes=[3, 4])
    reference = randomize(MotionformerForVideoClassification(config))
    path = tmp_path / "epic.pyth"
    write_official_checkpoint(reference, path, "module.")

    inferred = infer_config_from_official(torch.load(path, weights_only=True)["model_state"])
    assert inferred.head_sizes == [3, 4] and inferred.head_names == ["verb", "noun"]
    loaded = MotionformerForVideoClassification.from_official(path, config=config)
    pixel_values = video(config)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, reference(pixel_values).logits)


def test_from_official_reports_missing_and_unexpected_keys(tmp_path: Path):
    config = tiny_config()
    reference = randomize(MotionformerForVideoClassification(config))
    path = tmp_path / "partial.pyth"
    model_state = write_official_checkpoint(reference, path)
    del model_state["norm.weight"]
    model_state["pre_logits.fc.weight"] = torch.zeros(32, 32)
    torch.save({"model_state": model_state}, path)

    _, info = MotionformerForVideoClassification.from_official(path, config=config, output_loading_info=True)
    assert info == {"missing_keys": ["motionformer.norm.weight"], "unexpected_keys": ["pre_logits.fc.weight"]}


def test_from_official_shape_mismatch_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "checkpoint.pyth"
    write_official_checkpoint(MotionformerForVideoClassification(tiny_config()), path)
    with pytest.raises(ValueError, match="does not fit"):
        MotionformerForVideoClassification.from_official(path, config=tiny_config(intermediate_size=48))


class CodeOnUnpickle:
    """Unpickling this writes a marker file: a loader that runs arbitrary pickles would create it."""

    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_from_official_rejects_files_that_are_not_checkpoints(tmp_path: Path):
    text_file = tmp_path / "notes.pyth"
    text_file.write_text("not a checkpoint\n")
    payload = CodeOnUnpickle()
    payload.marker = tmp_path / "marker"
    pickled_object = tmp_path / "object.pyth"
    pickled_object.write_bytes(pickle.dumps(payload, protocol=2))
    wrong_layout = tmp_path / "state_dict.pyth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1, 1, 32)}}, wrong_layout)
    bare_tensor = tmp_path / "tensor.pyth"
    torch.save(torch.zeros(3), bare_tensor)

    for path in (text_file, pickled_object, wrong_layout, bare_tensor):
        with pytest.raises(ValueError, match="model_state") as error:
            MotionformerForVideoClassification.from_official(path)
        assert str(path) in str(error.value)
    assert not payload.marker.exists()

    with pytest.raises(FileNotFoundError):
        MotionformerForVideoClassification.from_official(tmp_path / "missing.pyth")


# Hugging Face serialisation


@pytest.mark.parametrize(
    "overrides", [{"use_projected_values": True}, {"head_sizes": [3, 4], "head_names": ["verb", "noun"]}]
)
def test_save_pretrained_round_trip(tmp_path: Path, overrides: dict):
    config = tiny_config(**overrides)
    model = randomize(MotionformerForVideoClassification(config))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()

    loaded = MotionformerForVideoClassification.from_pretrained(tmp_path)
    saved_fields = {key: value for key, value in model.config.to_dict().items() if key != "_name_or_path"}
    assert {key: loaded.config.to_dict()[key] for key in saved_fields} == saved_fields
    pixel_values = video(config)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values).logits, model(pixel_values).logits)
