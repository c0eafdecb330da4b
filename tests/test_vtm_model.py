"""The VTM network: block shapes, windows, the auxiliary path."""

import pytest
import torch

from videotome.vtm.model import WindowTokens, VideoTokenMerger, VTMConfig, merge_window, vtm_loss
from videotome.vtm.partition import count_targets

FRAMES, PER_FRAME, CHANNELS = 8, 17, 32


def tiny_config(**overrides) -> VTMConfig:
    settings = dict(in_channels=CHANNELS, num_outputs=3, channels=(16, 8, 8), windows=(2, 4, 8), num_heads=2,
                    dropout=0.0)
    settings.update(overrides)
    return VTMConfig(**settings)


def tokens_after_merge(num_tokens: int, gamma: float = 6.0, ratio: float = 0.8) -> int:
    sources = num_tokens - count_targets(num_tokens, gamma)
    return num_tokens - int(ratio * sources)


def block_inputs_to_linear(model: VideoTokenMerger) -> list[torch.Tensor]:
    """The list that each forward fills with every block's merged tokens, as they enter the block's Linear."""
    inputs: list[torch.Tensor] = []
    for block in model.blocks:
        block.linear.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
    return inputs


def shapes_of(tensors: list[torch.Tensor]) -> list[tuple[int, ...]]:
    return [tuple(tensor.shape) for tensor in tensors]


@pytest.mark.parametrize("partition", ["naive", "center", "boundary", "motion", "learnable"])
def test_shapes_through_the_three_blocks(partition: str) -> None:
    model = VideoTokenMerger(tiny_config(partition=partition)).eval()
    inputs = block_inputs_to_linear(model)
    output = model(torch.randn(2, FRAMES, PER_FRAME, CHANNELS), torch.rand(2, FRAMES, PER_FRAME))
    assert output.logits.shape == (2, 3)
    first = tokens_after_merge(2 * PER_FRAME)
    second = tokens_after_merge(2 * first)
    third = tokens_after_merge(2 * second)
    assert shapes_of(inputs) == [(2 * 4, first, CHANNELS), (2 * 2, second, 16), (2, third, 8)]


def test_baseline_keeps_every_token() -> None:
    model = VideoTokenMerger(tiny_config(merge=False)).eval()
    inputs = block_inputs_to_linear(model)
    model(torch.randn(1, FRAMES, PER_FRAME, CHANNELS))
    assert shapes_of(inputs) == [(4, 2 * PER_FRAME, CHANNELS), (2, 4 * PER_FRAME, 16), (1, 8 * PER_FRAME, 8)]
    assert model.saliency is None and model.aux_head is None


def test_merging_never_crosses_windows() -> None:
    torch.manual_seed(0)
    model = VideoTokenMerger(tiny_config(partition="naive")).eval()
    for parameter in model.blocks[0].attention.proj.parameters():
        torch.nn.init.zeros_(parameter)
    window_vectors = torch.randn(4, CHANNELS) * 10
    frames = window_vectors.repeat_interleave(2, dim=0)[None, :, None, :]
    tokens = frames + 0.1 * torch.randn(1, FRAMES, PER_FRAME, CHANNELS)
    merged: list[torch.Tensor] = []
    model.blocks[0].linear.register_forward_hook(lambda module, args, out: merged.append(args[0]))
    model(tokens)
    for window, rows in enumerate(merged[0]):
        assert torch.allclose(rows, window_vectors[window].expand_as(rows), atol=0.5)


def test_motion_partition_needs_motion() -> None:
    model = VideoTokenMerger(tiny_config(partition="motion"))
    with pytest.raises(ValueError, match="motion"):
        model(torch.randn(1, FRAMES, PER_FRAME, CHANNELS))


@pytest.mark.parametrize("aux_weights", ["shared", "separate"])
def test_auxiliary_path_trains_the_saliency_and_is_absent_at_inference(aux_weights: str) -> None:
    torch.manual_seed(0)
    model = VideoTokenMerger(tiny_config(partition="learnable", aux_weights=aux_weights))
    tokens, labels = torch.randn(3, FRAMES, PER_FRAME, CHANNELS), torch.tensor([0, 1, 2])
    output = model.train()(tokens)
    assert output.aux_logits is not None
    vtm_loss(output, labels, regression=False).backward()
    for projection in model.saliency:
        assert projection.weight.grad is not None and projection.weight.grad.abs().sum() > 0

    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    model.eval()
    with torch.no_grad():
        assert model(tokens).aux_logits is None
    assert calls == []


def test_main_loss_alone_gives_the_saliency_no_gradient() -> None:
    model = VideoTokenMerger(tiny_config(partition="learnable")).train()
    output = model(torch.randn(2, FRAMES, PER_FRAME, CHANNELS))
    vtm_loss(output, torch.tensor([0, 1]), regression=False, aux_weight=0.0).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.saliency.parameters())


def test_weighted_merge_equals_plain_merge_until_sizes_differ() -> None:
    """At the first merge every token holds one patch, so weighted and plain merging give the same tokens; at the
    second the merged tokens hold different numbers of patches, and the two differ."""
    torch.manual_seed(0)
    plain = VideoTokenMerger(tiny_config(partition="center")).eval()
    weighted = VideoTokenMerger(tiny_config(partition="center", weighted_merge=True)).eval()
    weighted.load_state_dict(plain.state_dict())
    tokens = torch.randn(2, FRAMES, PER_FRAME, CHANNELS)
    plain_inputs, weighted_inputs = block_inputs_to_linear(plain), block_inputs_to_linear(weighted)
    with torch.no_grad():
        plain(tokens)
        weighted(tokens)
    assert torch.equal(plain_inputs[0], weighted_inputs[0])
    assert plain_inputs[1].shape == weighted_inputs[1].shape
    assert not torch.allclose(plain_inputs[1], weighted_inputs[1])


@pytest.mark.parametrize(("weighted", "features"), [(False, [40.0, 5.0, 25.0]), (True, [40.0, 7.5, 27.5])])
def test_merge_window_weighs_features_by_size_only_when_asked(weighted: bool, features: list[float]) -> None:
    """Sources 1 and 3 merge into their most similar targets 0 and 2 (cosines 0.995 and 0.98; source 4, at 0.71,
    stays first). Plain: (0 + 10) / 2 and (20 + 30) / 2; weighted by sizes 1, 3 and 2, 6: 30 / 4 and 220 / 8. Sizes
    add up, and centrality is always a size-weighted mean."""
    keys = torch.tensor([[[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.2, 1.0], [1.0, 1.0]]])
    x = torch.tensor([[0.0, 10.0, 20.0, 30.0, 40.0]]).unsqueeze(-1)
    size = torch.tensor([[1.0, 3.0, 2.0, 6.0, 1.0]]).unsqueeze(-1)
    centrality = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.5]]).unsqueeze(-1)
    state = WindowTokens(x, size, centrality, None)
    merged = merge_window(state, keys, torch.tensor([[0, 2]]), torch.tensor([[1, 3, 4]]), 2, weighted)
    assert merged.x.squeeze(-1).tolist() == [features]
    assert merged.size.squeeze(-1).tolist() == [[1.0, 4.0, 8.0]]
    assert merged.centrality.squeeze(-1).tolist() == [[0.5, 0.25, 0.75]]
    assert merged.motion is None


def test_regression_predicts_one_value_and_sums_the_heads_squared_errors() -> None:
    """With one output both heads give (batch, 1); the loss is the main head's mean squared error plus aux_weight
    times the auxiliary head's."""
    torch.manual_seed(0)
    model = VideoTokenMerger(tiny_config(partition="learnable", weighted_merge=True, num_outputs=1)).train()
    output = model(torch.randn(2, FRAMES, PER_FRAME, CHANNELS))
    assert output.logits.shape == output.aux_logits.shape == (2, 1)
    target = torch.tensor([0.5, -1.0])
    main, aux = (((logits[:, 0] - target) ** 2).mean() for logits in (output.logits, output.aux_logits))
    torch.testing.assert_close(vtm_loss(output, target, regression=True), main + aux)
    torch.testing.assert_close(vtm_loss(output, target, regression=True, aux_weight=0.25), main + 0.25 * aux)
    assert main != aux


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="windows"):
        tiny_config(windows=(3, 4, 8))
    with pytest.raises(ValueError, match="partition"):
        tiny_config(partition="random")
    with pytest.raises(ValueError, match="num_heads=5"):
        VideoTokenMerger(tiny_config(num_heads=5))
    model = VideoTokenMerger(tiny_config())
    with pytest.raises(ValueError, match="frames"):
        model(torch.randn(1, 6, PER_FRAME, CHANNELS))
    with pytest.raises(ValueError, match="square"):
        model(torch.randn(1, FRAMES, 7, CHANNELS))


def test_math_attention_matches_the_fused_kernel() -> None:
    torch.manual_seed(0)
    fused = VideoTokenMerger(tiny_config(partition="learnable")).train()
    explicit = VideoTokenMerger(tiny_config(partition="learnable", attention="math")).train()
    explicit.load_state_dict(fused.state_dict())
    tokens = torch.randn(2, FRAMES, PER_FRAME, CHANNELS)
    torch.manual_seed(1)
    first = fused(tokens)
    torch.manual_seed(1)
    second = explicit(tokens)
    assert torch.allclose(first.logits, second.logits, atol=1e-4)
    assert torch.allclose(first.aux_logits, second.aux_logits, atol=1e-4)
