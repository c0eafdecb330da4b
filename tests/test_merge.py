"""The matching and merging algorithms on hand-computed cases."""

import math

import pytest
import torch

from videotome import merge


def _tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Six tokens: A = 0, 2, 4 and B = 1, 3, 5. 0~1 and 2~3 are identical in direction; 4 is halfway."""
    metric = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    x = torch.arange(6, dtype=torch.float32).unsqueeze(-1) * 10
    return metric.unsqueeze(0), x.unsqueeze(0)


def test_each_chosen_token_goes_to_its_most_similar_partner():
    metric, _ = _tokens()
    scores, partner = merge._similarity(metric).max(dim=-1)
    torch.testing.assert_close(scores, torch.tensor([[1.0, 1.0, math.sqrt(0.5)]]))
    assert partner.tolist() == [[0, 1, 0]]
    reduction = merge.bipartite_soft_matching(metric, 3)
    assert reduction.src.tolist() == [[0, 1, 2]] and reduction.dst.tolist() == [[0, 1, 0]]


def test_a_batch_reduces_each_sample_as_it_would_alone():
    torch.manual_seed(0)
    metric, x, size = torch.randn(5, 33, 8), torch.randn(5, 33, 16), torch.rand(5, 33, 1) + 1
    batched = merge.merge_wavg(merge.bipartite_soft_matching(metric, 9, protect_first=True), x, size)
    for i in range(5):
        alone = merge.merge_wavg(merge.bipartite_soft_matching(metric[i:i + 1], 9, protect_first=True),
                                 x[i:i + 1], size[i:i + 1])
        assert torch.equal(batched[0][i:i + 1], alone[0]) and torch.equal(batched[1][i:i + 1], alone[1])


def test_merge_picks_highest_scores_and_keeps_order():
    metric, x = _tokens()
    reduction = merge.bipartite_soft_matching(metric, 2)
    assert reduction.kept.tolist() == [[2]] and reduction.src.tolist() == [[0, 1]] and reduction.dst.tolist() == [[0, 1]]
    out, size = merge.merge_wavg(reduction, x, None)
    # [token 4, (0 + 1) / 2, (2 + 3) / 2, token 5]
    assert out.squeeze(-1).tolist() == [[40.0, 5.0, 25.0, 50.0]]
    assert size.squeeze(-1).tolist() == [[1.0, 2.0, 2.0, 1.0]]


def test_protected_class_token_stays_first_and_alone():
    metric, x = _tokens()
    reduction = merge.bipartite_soft_matching(metric, 2, protect_first=True)
    out, size = merge.merge_wavg(reduction, x, None)
    # token 0 kept first; 2 -> 3 and 4 -> 1
    assert out.squeeze(-1).tolist() == [[0.0, 25.0, 25.0, 50.0]]
    assert size.squeeze(-1).tolist() == [[1.0, 2.0, 2.0, 1.0]]


def test_sizes_weight_the_average():
    metric, x = _tokens()
    size = torch.tensor([[3.0, 1.0, 1.0, 1.0, 1.0, 1.0]]).unsqueeze(-1)
    out, new_size = merge.merge_wavg(merge.bipartite_soft_matching(metric, 1), x, size)
    # token 0 (size 3, value 0) merges into token 1 (size 1, value 10)
    assert out.squeeze(-1).tolist() == [[20.0, 40.0, 2.5, 30.0, 50.0]]
    assert new_size.squeeze(-1).tolist() == [[1.0, 1.0, 4.0, 1.0, 1.0]]


def test_r_is_clamped():
    metric, x = _tokens()
    assert merge.bipartite_soft_matching(metric, 10).r == 3
    assert merge.bipartite_soft_matching(metric, 10, protect_first=True).r == 2
    assert merge.clamp_r(150, 1568) == 150 and merge.clamp_r(900, 1568) == 784 and merge.clamp_r(900, 1569, 1) == 784


def test_drop_removes_the_same_tokens_merge_would_average():
    metric, x = _tokens()
    out, size = merge.merge_wavg(merge.bipartite_soft_matching(metric, 2, strategy="drop"), x, None)
    assert out.squeeze(-1).tolist() == [[40.0, 10.0, 30.0, 50.0]]
    assert size.squeeze(-1).tolist() == [[1.0, 1.0, 1.0, 1.0]]


def test_hybrid_merges_above_threshold_and_drops_below():
    metric, x = _tokens()
    reduction = merge.bipartite_soft_matching(metric, 3, strategy="hybrid", threshold=0.9)
    out, size = merge.merge_wavg(reduction, x, None)
    # 0 -> 1 and 2 -> 3 have cosine 1 (merged); 4 -> 1 has 0.71 (dropped)
    assert out.squeeze(-1).tolist() == [[5.0, 25.0, 50.0]]
    assert size.squeeze(-1).tolist() == [[2.0, 2.0, 1.0]]


def test_hybrid_needs_a_threshold():
    metric, _ = _tokens()
    with pytest.raises(ValueError, match="threshold"):
        merge.bipartite_soft_matching(metric, 1, strategy="hybrid")


@pytest.mark.parametrize("strategy", ["random_drop", "random_merge"])
def test_random_strategies_repeat_with_a_seed_and_protect_the_class_token(strategy):
    metric = torch.randn(4, 31, 8)
    first = merge.bipartite_soft_matching(
        metric, 10, protect_first=True, strategy=strategy, generator=torch.Generator().manual_seed(3)
    )
    again = merge.bipartite_soft_matching(
        metric, 10, protect_first=True, strategy=strategy, generator=torch.Generator().manual_seed(3)
    )
    other = merge.bipartite_soft_matching(
        metric, 10, protect_first=True, strategy=strategy, generator=torch.Generator().manual_seed(4)
    )
    assert all(torch.equal(a, b) for a, b in zip(first[:3], again[:3]))
    assert not torch.equal(first.src, other.src)
    assert (first.kept[:, 0] == 0).all()
    assert first.r == 10


def test_random_merge_keeps_every_patch_and_random_drop_loses_r():
    metric = torch.randn(2, 20, 8)
    x = torch.randn(2, 20, 4)
    merged = merge.bipartite_soft_matching(metric, 6, strategy="random_merge", generator=torch.Generator().manual_seed(0))
    dropped = merge.bipartite_soft_matching(metric, 6, strategy="random_drop", generator=torch.Generator().manual_seed(0))
    assert merge.merge_wavg(merged, x, None)[1].sum(1).flatten().tolist() == [20.0, 20.0]
    assert merge.merge_wavg(dropped, x, None)[1].sum(1).flatten().tolist() == [14.0, 14.0]


def test_source_map_tracks_every_input_token():
    metric = torch.randn(3, 17, 8)
    source = None
    x = torch.randn(3, 17, 4)
    size = None
    for _ in range(3):
        reduction = merge.bipartite_soft_matching(metric, 4, protect_first=True)
        source = merge.merge_source(reduction, source, metric.shape[1])
        x, size = merge.merge_wavg(reduction, x, size)
        metric = merge.apply(reduction, metric)
    assert source.shape == (3, 5, 17)
    assert torch.equal(source.sum(1), torch.ones(3, 17))  # each input token in exactly one output token
    assert torch.equal(source.sum(-1, keepdim=True), size)
    assert torch.equal(source[:, 0, 0], torch.ones(3))


@pytest.mark.parametrize("tokens, r", [(17, 6), (16, 8), (9, 0)])
def test_each_merged_token_is_the_mean_of_the_inputs_it_holds(tokens, r):
    metric = torch.randn(3, tokens, 8)
    x = torch.randn(3, 5, tokens).transpose(1, 2)  # a non-contiguous batch, as adapters may pass
    reduction = merge.bipartite_soft_matching(metric, r)
    out, size = merge.merge_wavg(reduction, x, None)
    source = merge.merge_source(reduction, None, tokens)
    assert out.shape == (3, tokens - r, 5)
    torch.testing.assert_close(out, source @ x / source.sum(-1, keepdim=True))
    assert torch.equal(size, source.sum(-1, keepdim=True))


def test_explicit_sets_merge_sources_into_targets():
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]])
    x = torch.arange(5, dtype=torch.float32).view(1, 5, 1)
    targets = torch.tensor([[0, 1]])
    sources = torch.tensor([[2, 3, 4]])
    reduction = merge.bipartite_soft_matching(metric, 2, a_idx=sources, b_idx=targets)
    out, size = merge.merge_wavg(reduction, x, None)
    # sources 2 -> target 0 and 3 -> target 1 merge; source 4 stays, then the targets
    assert out.squeeze(-1).tolist() == [[4.0, 1.0, 2.0]]
    assert size.squeeze(-1).tolist() == [[1.0, 2.0, 2.0]]


def test_repeat_shares_one_matching_across_groups():
    metric = torch.randn(2, 10, 4)
    reduction = merge.repeat(merge.bipartite_soft_matching(metric, 3), 4)
    assert reduction.src.shape == (8, 3)
    assert torch.equal(reduction.src[0], reduction.src[3]) and torch.equal(reduction.src[4], reduction.src[7])


def test_half_precision_merging_does_not_overflow():
    metric = torch.randn(1, 16, 8)
    x = torch.full((1, 16, 2), 60000.0, dtype=torch.float16)
    out, _ = merge.merge_wavg(merge.bipartite_soft_matching(metric, 8), x, torch.full((1, 16, 1), 4.0))
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_merge_is_the_exact_merge_to_within_rounding(dtype):
    """fp16/bf16 features merge to the exact size-weighted means of the (rounded) inputs within the rounding the
    formula allows; sizes stay exact, in float32, even where the half type cannot hold them (bf16 above 256)."""
    generator = torch.Generator().manual_seed(0)
    metric = torch.randn(3, 33, 8, generator=generator)
    x = torch.randn(3, 33, 16, generator=generator).to(dtype)
    size = torch.randint(1, 2000, (3, 33, 1), generator=generator).float()
    reduction = merge.bipartite_soft_matching(metric, 12, protect_first=True)
    out, new_size = merge.merge_wavg(reduction, x, size)

    held = merge.merge_source(reduction, None, 33).double() * size.double().transpose(1, 2)  # patches of each input
    expected_size = held.sum(-1, keepdim=True)
    expected = held @ x.double() / expected_size
    assert out.dtype == dtype and out.shape == (3, 33 - 12, 16)
    assert new_size.dtype == torch.float32 and torch.equal(new_size.double(), expected_size)
    # a token averaging m inputs rounds m + 1 weights, m products and m sums, each to half an epsilon of the largest
    # input: at most (3m + 1) / 2 epsilons of it
    members = (held > 0).sum(-1, keepdim=True)
    bound = (3 * members + 1) / 2 * torch.finfo(dtype).eps * x.abs().amax(dim=(1, 2), keepdim=True).double()
    assert ((out.double() - expected).abs() <= bound).all()
    assert members.max() > 2  # some tokens really average several inputs


def test_the_public_names_are_all_that_is_not_private() -> None:
    import inspect

    functions = {name for name, value in vars(merge).items() if not name.startswith("_")
                 and (inspect.isfunction(value) or inspect.isclass(value)) and value.__module__ == merge.__name__}
    constants = {name for name in vars(merge) if name.isupper()}
    defined = functions | constants
    assert sorted(merge.__all__) == sorted(defined)
    assert not {"split", "select", "best_match", "positions"} & set(vars(merge))


def test_pair_positions_name_each_chosen_token_and_its_partner() -> None:
    metric = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(3))
    reduction = merge.bipartite_soft_matching(metric, 3, protect_first=True)
    src, dst = merge.pair_positions(reduction, 9)
    assert (src % 2 == 0).all() and (dst % 2 == 1).all() and not (src == 0).any()
    unit = metric / metric.norm(dim=-1, keepdim=True)
    best = (unit[:, ::2] @ unit[:, 1::2].transpose(1, 2)).max(dim=-1)
    for b in range(2):  # each chosen A token's partner is its best match
        assert (dst[b] == 2 * best.indices[b, src[b] // 2] + 1).all()
    a_idx, b_idx = torch.tensor([[0, 3, 5]] * 2), torch.tensor([[1, 2, 8]] * 2)
    reduction = merge.bipartite_soft_matching(metric, 2, a_idx=a_idx, b_idx=b_idx)
    src, dst = merge.pair_positions(reduction, 9)
    assert set(src.flatten().tolist()) <= {0, 3, 5} and set(dst.flatten().tolist()) <= {1, 2, 8}
