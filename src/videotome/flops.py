"""Analytic FLOP counts of a model's blocks from their dimensions and token counts; knows no model class.

A matrix product of (m, k) by (k, n) counts 2 m k n FLOPs, as torch's FLOP counter (``torch.utils.flop_counter``)
counts it, and nothing else counts: norms, softmax, activations and elementwise operations are left out there too,
so the two agree (the tests check it for every family). Each adapter describes its family with a :class:`ModelCost`
(its blocks' :class:`BlockShape` and the FLOPs outside the blocks); :class:`~videotome.plan.MergePlan` counts a plan
with it, which is what ``videotome.patch(model, flops=...)`` chooses r by.
"""

from __future__ import annotations

from dataclasses import dataclass

#: how a block attends: over one joint sequence; divided space-time (temporal attention over each patch slot's
#: frames, then spatial attention within each frame, TimeSformer); trajectory attention (Motionformer)
ATTENTION_KINDS = ("joint", "divided", "trajectory")


def matmul(m: int, k: int, n: int) -> int:
    """FLOPs of an (m, k) by (k, n) matrix product."""
    return 2 * m * k * n


@dataclass(frozen=True)
class BlockShape:
    """What a count needs of a family's transformer blocks (all blocks alike).

    ``kind`` is one of :data:`ATTENTION_KINDS`; ``mlp`` the MLP's FLOPs per token; ``frames`` the temporal positions
    of a divided or trajectory model, whose token groups are frames and which hold one class token outside them;
    ``projected_values`` the Motionformer's option of projecting the trajectory's values.
    """

    kind: str
    hidden: int
    heads: int
    mlp: int
    frames: int = 1
    projected_values: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ATTENTION_KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {ATTENTION_KINDS}")

    def sequence(self, per_group: int) -> int:
        """The whole sequence's length when each group holds ``per_group`` tokens."""
        return per_group if self.kind == "joint" else 1 + self.frames * per_group

    def attention(self, per_group: int) -> int:
        """FLOPs of the attention part of a block (projections included) over ``per_group`` tokens per group."""
        c = self.hidden
        n = self.sequence(per_group)
        if self.kind == "joint":
            return matmul(n, c, 4 * c) + 2 * matmul(n, c, n)
        frames, patches = self.frames, n - 1
        if self.kind == "divided":
            temporal = matmul(patches, c, 5 * c) + 2 * matmul(patches, c, frames)  # qkv, output and temporal_dense
            spatial = frames * (per_group + 1)  # each frame's tokens with a copy of the class token
            return temporal + matmul(spatial, c, 4 * c) + 2 * matmul(spatial, c, per_group + 1)
        # trajectory: the class token over all tokens, each patch over each frame's patches, then along its
        # trajectory (the query projection and the key weight applied to it, the logits over frames, the values)
        flops = matmul(n, c, 4 * c) + 2 * matmul(n, c, 1) + 2 * matmul(patches, c, patches)
        flops += 2 * matmul(patches, c, c) + matmul(patches, self.heads * c, frames)
        if self.projected_values:
            return flops + matmul(patches, self.heads * c, frames) + matmul(patches, c, c)
        return flops + matmul(patches, c, frames)

    def mlp_flops(self, per_group: int) -> int:
        """FLOPs of the MLP over ``per_group`` tokens per group."""
        return self.sequence(per_group) * self.mlp

    def matching(self, per_group: int, matchings: int) -> int:
        """FLOPs of ``matchings`` bipartite matchings of ``per_group`` tokens (cosines of the mean key over heads:
        the even positions against the odd ones)."""
        return matchings * matmul((per_group + 1) // 2, self.hidden // self.heads, per_group // 2)


@dataclass(frozen=True)
class ModelCost:
    """A model's analytic FLOPs per input sample (a clip; an image for image models on frames): its blocks' shape,
    how many there are, and the FLOPs outside them (the patch embedding and the head), which merging leaves alone."""

    block: BlockShape
    layers: int
    outside: int

    def layer(self, tokens_in: int, tokens_out: int, matchings: int) -> int:
        """One block that reduces each group from ``tokens_in`` to ``tokens_out`` tokens between its attention and
        its MLP, with ``matchings`` matchings (0 when nothing is matched: r = 0, or a random strategy)."""
        return self.block.attention(tokens_in) + self.block.matching(tokens_in, matchings) + self.block.mlp_flops(tokens_out)

    def unmerged(self, per_group: int) -> int:
        """The whole model's FLOPs without merging, ``per_group`` tokens per group at the input."""
        return self.outside + self.layers * self.layer(per_group, per_group, 0)
