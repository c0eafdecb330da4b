"""The VTM network: block shapes, windows, the auxiliary path."""

import pytest
import torch

from videotome.vtm.model import VideoTokenMerger, VTMConfig, vtm_loss
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


def block_inputs_to_linear(model: VideoTokenMerger) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    for block in model.blocks:
        block.linear.register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


@pytest.mark.parametrize("partition", ["naive", "center", "boundary", "motion", "learnable"])
def test_shapes_through_the_three_blocks(partition: str) -> None:
    model = VideoTokenMerger(tiny_config(partition=partition)).eval()
    shapes = block_inputs_to_linear(model)
    output = model(torch.randn(2, FRAMES, PER_FRAME, CHANNELS), torch.rand(2, FRAMES, PER_FRAME))
    assert output.logits.shape == (2, 3)
    first = tokens_after_merge(2 * PER_FRAME)
    second = tokens_after_merge(2 * first)
    third = tokens_after_merge(2 * second)
    assert shapes == [(2 * 4, first, CHANNELS), (2 * 2, second, 16), (2, third, 8)]


def test_baseline_keeps_every_token() -> None:
    model = VideoTokenMerger(tiny_config(merge=False)).eval()
    shapes = block_inputs_to_linear(model)
    model(torch.randn(1, FRAMES, PER_FRAME, CHANNELS))
    assert shapes == [(4, 2 * PER_FRAME, CHANNELS), (2, 4 * PER_FRAME, 16), (1, 8 * PER_FRAME, 8)]
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


def test_weighted_merge_and_regression_run() -> None:
    model = VideoTokenMerger(tiny_config(partition="center", weighted_merge=True, num_outputs=1)).train()
    output = model(torch.randn(2, FRAMES, PER_FRAME, CHANNELS))
    loss = vtm_loss(output, torch.tensor([0.5, -1.0]), regression=True)
    assert loss.ndim == 0 and torch.isfinite(loss)


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
