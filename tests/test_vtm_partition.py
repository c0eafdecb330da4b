"""Target choice of each VTM partition."""

import pytest
import torch

from videotome.vtm.partition import (
    central_mask,
    choose_targets,
    complement,
    count_targets,
    naive_targets,
    region_targets,
    sample_targets,
    top_targets,
)


def test_count_targets_is_a_gamma_share() -> None:
    assert count_targets(1182, 6) == 197
    assert count_targets(10, 6) == 2
    with pytest.raises(ValueError, match="gamma"):
        count_targets(10, 0.5)


def test_naive_takes_every_gamma_th_token() -> None:
    targets = naive_targets(2, 36, count_targets(36, 6))
    assert targets.tolist() == [[0, 6, 12, 18, 24, 30]] * 2


def test_complement_lists_the_other_positions_in_order() -> None:
    targets = torch.tensor([[1, 4], [0, 5]])
    assert complement(targets, 6).tolist() == [[0, 2, 3, 5], [1, 2, 3, 4]]


def test_central_mask_marks_the_middle_half_of_each_side() -> None:
    mask = central_mask(4, 4, prefix=1)
    assert mask[0] == 0
    assert mask[1:].reshape(4, 4).tolist() == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert central_mask(14, 14).sum() == 49


@pytest.mark.parametrize("prefer, inside_share", [("center", 0.5), ("boundary", 0.1)])
def test_region_partitions_count_targets_by_region(prefer: str, inside_share: float) -> None:
    frames, gamma = 6, 6
    centrality = central_mask(14, 14).repeat(frames).unsqueeze(0)
    num_targets = count_targets(centrality.shape[1], gamma)
    targets = region_targets(centrality, num_targets, prefer)
    assert targets.shape == (1, num_targets)
    assert targets.unique().numel() == num_targets
    inside = int(centrality[0, targets[0]].sum())
    assert inside == round(inside_share * num_targets)


def test_center_partition_uses_half_gamma_inside_and_three_half_gamma_outside() -> None:
    centrality = central_mask(12, 12).repeat(6).unsqueeze(0)
    num_targets = count_targets(centrality.shape[1], 6)
    targets = region_targets(centrality, num_targets, "center")
    inside = int(centrality[0, targets[0]].sum())
    assert centrality.sum() / inside == pytest.approx(3, rel=0.05)
    assert (centrality.numel() - centrality.sum()) / (num_targets - inside) == pytest.approx(9, rel=0.05)


def test_region_partition_follows_merged_centrality() -> None:
    centrality = torch.tensor([[0.9, 0.1, 0.6, 0.0, 0.2, 0.4, 0.3, 0.0]])
    targets = region_targets(centrality, 4, "center")
    central_targets = [t for t in targets[0].tolist() if t in (0, 2)]
    assert len(central_targets) == 2


def test_motion_targets_are_the_moving_tokens_when_motion_dominates() -> None:
    motion = torch.zeros(3, 40)
    moving = torch.tensor([3, 11, 17, 29])
    motion[:, moving] = 50.0
    targets = choose_targets("motion", 4, num_tokens=40, batch=3, motion=motion)
    assert (targets == moving).all()


def test_sampled_targets_follow_their_scores() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.linspace(-1, 1, 30).expand(2000, -1)
    targets = sample_targets(scores, 5, generator=generator)
    counts = torch.bincount(targets.flatten(), minlength=30).float()
    assert counts[20:].sum() > 2 * counts[:10].sum()
    assert all(row.unique().numel() == 5 for row in targets[:50])


def test_sampling_with_replacement_still_gives_distinct_sorted_targets() -> None:
    scores = torch.randn(64, 20)
    targets = sample_targets(scores, 6, replacement=True, generator=torch.Generator().manual_seed(1))
    assert targets.shape == (64, 6)
    assert (targets.diff(dim=1) > 0).all()


def test_learnable_samples_in_training_and_takes_the_top_in_evaluation() -> None:
    saliency = torch.randn(4, 24)
    evaluation = choose_targets("learnable", 4, num_tokens=24, batch=4, saliency=saliency, sample=False)
    assert (evaluation == top_targets(saliency, 4)).all()
    assert (saliency.gather(1, evaluation).min(dim=1).values >= saliency.topk(4).values[:, -1]).all()
    with pytest.raises(ValueError, match="saliency"):
        choose_targets("learnable", 4, num_tokens=24, batch=4)
