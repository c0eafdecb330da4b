"""What every model adapter shares: the token state, attention with size bias, and the reduction step.

An adapter knows one model family's layout (where its layers, norms and projections are, how tokens are ordered)
and calls the algorithms in :mod:`videotome.merge`; it holds no per-forward state.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.modeling_outputs import ImageClassifierOutput, ModelOutput

from .. import merge
from ..flops import BlockShape, ModelCost, matmul
from ..kernels import softmax_last_dim
from ..plan import MergePlan, TokenLayout
from ..stats import ReductionRecord, frames_held, record_reduction

class TokenState(NamedTuple):
    """The tokens between layers: features, sizes (patches each token holds) and the source map.

    ``size`` and ``source`` are None until the first reduction, meaning one patch per token and the identity.
    Divided models keep ``size`` per frame, (batch * frames, tokens per frame, 1); ``source`` is always
    (batch, tokens, input tokens) in the model's own token order. ``records`` gathers one
    :class:`~videotome.stats.ReductionRecord` per reduction when the plan records statistics.
    """

    x: Tensor
    size: Tensor | None = None
    source: Tensor | None = None
    records: tuple[ReductionRecord, ...] = ()


class LayerCall(NamedTuple):
    """What one layer needs from the plan: its index, its requested r, and the plan itself."""

    index: int
    r: int
    plan: MergePlan


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    log_size: Tensor | None = None,
    implementation: str = "sdpa",
    dropout: float = 0.0,
    merged_keys: bool = False,
) -> Tensor:
    """Multi-head attention (batch, heads, tokens, head dim) with log(size) of every key added to its logits.

    Proportional attention (Bolya et al.) makes a token that holds s patches attract as much attention as those
    s patches would. ``log_size`` is (batch, tokens); None adds nothing. ``implementation`` "eager" computes the
    softmax in float32 as Hugging Face's eager path does; anything else uses ``scaled_dot_product_attention`` with
    the bias as an additive float mask. Returns (batch, tokens, heads * head dim).

    ``merged_keys`` says that merging shortens these keys (a frame's tokens in a divided model): the eager softmax
    then stays fast when a frame is down to a few tokens (:func:`videotome.kernels.softmax_last_dim`). Attention
    over keys that merging leaves alone keeps torch's kernel, as the unmerged model has it, so that speedups measure
    merging and not a kernel.
    """
    bias = None if log_size is None else log_size[:, None, None, :].to(q.dtype)
    if implementation == "eager":
        logits = (q @ k.transpose(-1, -2)) * scale
        if bias is not None:
            logits = logits + bias
        weights = softmax_last_dim(logits.float()) if merged_keys else logits.softmax(dim=-1, dtype=torch.float32)
        weights = weights.to(q.dtype)
        out = F.dropout(weights, p=dropout, training=dropout > 0) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).flatten(2)


def log_size(size: Tensor | None, plan: MergePlan) -> Tensor | None:
    """The proportional-attention bias (batch, tokens), or None when the plan turns it off or nothing merged."""
    if size is None or not plan.prop_attn:
        return None
    return size[..., 0].log()


def layer_generator(call: LayerCall, device: torch.device) -> torch.Generator | None:
    """A generator seeded from the plan's seed and the layer index, so random strategies repeat exactly."""
    settings = call.plan.settings
    if settings.seed is None or not settings.strategy.startswith("random"):
        return None
    return torch.Generator(device=device).manual_seed(settings.seed * 1_000_003 + call.index)


def prepare_reduction(
    metric: Tensor, call: LayerCall, *, protect_first: bool, shared_groups: int = 1
) -> merge.Reduction:
    """Match on ``metric`` (batch, tokens, C) with the plan's strategy and this layer's r.

    ``shared_groups`` > 1 makes consecutive rows of the batch share one matching computed from their mean
    metric (every frame of a clip in aligned mode), so all of them merge the same positions.
    """
    settings = call.plan.settings
    if shared_groups > 1:
        metric = metric.unflatten(0, (-1, shared_groups)).mean(dim=1)
    reduction = merge.bipartite_soft_matching(
        metric,
        call.r,
        protect_first=protect_first,
        strategy=settings.strategy,
        threshold=settings.threshold,
        generator=layer_generator(call, metric.device),
    )
    return merge.repeat(reduction, shared_groups) if shared_groups > 1 else reduction


def identity_source(x: Tensor) -> Tensor:
    """The source map before any merge: each of the (batch, tokens) tokens holds itself."""
    return torch.eye(x.shape[1], dtype=torch.float32, device=x.device).expand(x.shape[0], -1, -1)


def reduce_tokens(state: TokenState, metric: Tensor, call: LayerCall, *, protect_first: bool) -> TokenState:
    """Match on ``metric`` (batch, tokens, C) and reduce a joint sequence's tokens, sizes and source map.

    A sequence too short to lose a token (r clamped to 0) is left as it is, in its order. A plan with
    ``free_removal`` (the zero-cost ideal, benchmarks only) keeps the first tokens instead, by a slice.
    """
    r = merge.clamp_r(call.r, metric.shape[1], int(protect_first))
    if r == 0:
        return state
    if call.plan.free_removal:
        x, size = merge.slice_first(state.x, state.size, r)
        return state._replace(x=x, size=size)
    with merge.profiled():
        reduction = prepare_reduction(metric, call, protect_first=protect_first)
        x, size = merge.merge_wavg(reduction, state.x, state.size)
        source = state.source
        if call.plan.trace_source:
            source = merge.merge_source(reduction, source, state.x.shape[1])
    records = state.records
    if call.plan.record_stats:
        frames = call.plan.input_frames
        held = None if frames is None else frames_held(state.source, torch.tensor(frames, device=x.device), len(x))
        records += (record_reduction(reduction, metric, clips=metric.shape[0], frames_held=held),)
    return TokenState(x, size, source, records)


def to_frames(patches: Tensor, frames: int, *, frame_major: bool) -> Tensor:
    """A divided model's patch tokens (batch, frames * count, C), in the model's order, as each frame's tokens,
    (batch * frames, count, C).

    Frame-major sequences hold token t * count + p, patch-major ones token p * frames + t (after the class token,
    which is not part of ``patches``). Row b * frames + t is frame t of clip b.
    """
    if frame_major:
        return patches.reshape(patches.shape[0] * frames, -1, patches.shape[-1])
    return patches.unflatten(1, (-1, frames)).transpose(1, 2).flatten(0, 1)


def from_frames(per_frame: Tensor, frames: int, *, frame_major: bool) -> Tensor:
    """The inverse of :func:`to_frames`: (batch, frames * count, C) in the model's order."""
    clips = per_frame.unflatten(0, (-1, frames))
    if not frame_major:
        clips = clips.transpose(1, 2)
    return clips.flatten(1, 2)


def reduce_frames(
    cls: Tensor,
    per_frame: Tensor,
    state: TokenState,
    metric: Tensor,
    call: LayerCall,
    frames: int,
    *,
    frame_major: bool,
) -> TokenState:
    """Reduce each frame of a divided model on its own; return the state with x back in the model's order.

    ``per_frame`` holds each frame's tokens as :func:`to_frames` lays them out, (batch * frames, count, C), and
    ``cls`` the class token (batch, 1, C); ``metric`` is per frame too. ``per_frame`` mode matches every frame on its
    own keys; ``aligned`` mode matches once per clip on the frame-averaged keys and applies the same merges to every
    frame. Sizes stay per frame, (batch * frames, count, 1); the source map stays in the model's order and goes
    through :func:`to_frames` and :func:`from_frames` as the features do, so it shows where each token's patches
    really come from. Frames too short to lose a token (r clamped to 0) are left as they are; a plan with
    ``free_removal`` keeps each frame's first tokens, by a slice.
    """
    r = merge.clamp_r(call.r, per_frame.shape[1])
    if r > 0 and call.plan.free_removal:
        per_frame, size = merge.slice_first(per_frame, state.size, r)
        state = state._replace(size=size)
    elif r > 0:
        with merge.profiled():
            shared = frames if call.plan.settings.divided == "aligned" else 1
            reduction = prepare_reduction(metric, call, protect_first=False, shared_groups=shared)
            per_frame, size = merge.merge_wavg(reduction, per_frame, state.size)
            source = state.source
            if call.plan.trace_source:
                source = identity_source(state.x) if source is None else source
                reduced = merge.apply(reduction, to_frames(source[:, 1:], frames, frame_major=frame_major))
                source = torch.cat([source[:, :1], from_frames(reduced, frames, frame_major=frame_major)], dim=1)
            records = state.records
            if call.plan.record_stats:
                records += (record_reduction(reduction, metric, clips=metric.shape[0] // frames),)
            state = TokenState(state.x, size, source, records)
    x = torch.cat([cls, from_frames(per_frame, frames, frame_major=frame_major)], dim=1)
    return state._replace(x=x)


def patch_grid(times: int, rows: int, cols: int, *, class_token: bool, time_major: bool = True) -> Tensor:
    """(time, row, col) of each token of a (times x rows x cols) patch grid, in time-major or patch-major order,
    after a class token at (-1, -1, -1) when there is one."""
    t, r, c = torch.meshgrid(torch.arange(times), torch.arange(rows), torch.arange(cols), indexing="ij")
    grid = torch.stack([t, r, c], dim=-1)
    grid = grid.reshape(-1, 3) if time_major else grid.permute(1, 2, 0, 3).reshape(-1, 3)
    return torch.cat([torch.full((1, 3), -1), grid]) if class_token else grid


def weighted_mean(x: Tensor, size: Tensor | None) -> Tensor:
    """Mean over tokens in which a merged token counts as the patches it holds; a plain mean before merging."""
    if size is None:
        return x.mean(dim=1)
    size = size.to(x.dtype)
    return (x * size).sum(dim=1) / size.sum(dim=1)


def linear_flops(*modules: nn.Module) -> int:
    """FLOPs of one token through every ``nn.Linear`` in ``modules`` (an MLP, a head)."""
    return sum(
        matmul(1, linear.in_features, linear.out_features)
        for module in modules
        for linear in module.modules()
        if isinstance(linear, nn.Linear)
    )


class Adapter:
    """One model family: where its layers are, how its tokens are laid out, and its merged layer forward."""

    #: the model classes this adapter patches, for the error message of unsupported models
    classes: tuple[type, ...] = ()
    #: proportional attention unless the user says otherwise
    prop_attn_default: bool = True
    #: how the blocks attend, for the FLOP count (:data:`videotome.flops.ATTENTION_KINDS`)
    attention_kind: str = "joint"

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks, in order."""
        raise NotImplementedError

    def layout(self, model: nn.Module) -> TokenLayout:
        """How the sequence divides for merging at the model's configured input size."""
        raise NotImplementedError

    def embed(self, model: nn.Module, pixel_values: Tensor, **kwargs: object) -> Tensor:
        """Tokens entering the first block."""
        raise NotImplementedError

    def grid(self, model: nn.Module) -> Tensor:
        """Where each input token sits, (input tokens, 3): time step, patch row, patch column; -1 for a class token."""
        raise NotImplementedError

    def joint_frames(self, model: nn.Module) -> tuple[int, ...] | None:
        """Each input token's frame (-1 for a class token) for a joint space-time model, whose merges may join
        frames; None for divided models (they merge within a frame) and image models (one frame)."""
        times = self.grid(model)[:, 0]
        if self.layout(model).groups > 1 or int(times.max()) < 1:
            return None
        return tuple(times.tolist())

    def run_original(self, layer: nn.Module, x: Tensor) -> Tensor:
        """The model's own block, used while nothing has merged yet, so r=0 is bit-identical."""
        return layer(x)

    def layer_forward(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        """One block with merging between its attention residual and its MLP."""
        raise NotImplementedError

    def merge_step(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        """This block's merging alone: its keys of the current tokens (its own norm and key projection), matched
        and reduced as in :meth:`layer_forward`, with no attention or MLP update (layer duplication analyses)."""
        raise NotImplementedError

    def finish(self, model: nn.Module, state: TokenState, labels: Tensor | None) -> ModelOutput:
        """Final norm, pooling and head, returning the model's usual output class."""
        raise NotImplementedError

    def sources(self, state: TokenState) -> Tensor:
        """The (batch, final tokens, input tokens) map, in the model's own token order."""
        return identity_source(state.x) if state.source is None else state.source

    def base(self, model: nn.Module) -> nn.Module:
        """The backbone: the model itself, unless a classifier wraps it."""
        return model

    def patch_projection(self, model: nn.Module) -> nn.Module:
        """The patch embedding's convolution (by default where Hugging Face's vision models keep it)."""
        return self.base(model).embeddings.patch_embeddings.projection

    def head_modules(self, model: nn.Module) -> tuple[nn.Module, ...]:
        """What runs on one token per sample after the blocks (pooler, classifier); () for a bare backbone. By
        default a Hugging Face classifier's ``classifier``."""
        return () if model is self.base(model) else (model.classifier,)

    def mlp_modules(self, layer: nn.Module) -> tuple[nn.Module, ...]:
        """The modules of a block's MLP (by default Hugging Face's ``intermediate`` and ``output``)."""
        return layer.intermediate, layer.output

    def cost(self, model: nn.Module) -> ModelCost:
        """The model's analytic FLOPs per input sample at its configured input size (:mod:`videotome.flops`)."""
        config, layers, layout = model.config, self.layers(model), self.layout(model)
        block = BlockShape(self.attention_kind, config.hidden_size, config.num_attention_heads,
                           linear_flops(*self.mlp_modules(layers[0])), frames=layout.groups)
        patches = int((self.grid(model)[:, 0] >= 0).sum())
        outside = 2 * patches * self.patch_projection(model).weight.numel()  # one product per patch
        return ModelCost(block, len(layers), outside + linear_flops(*self.head_modules(model)))


class PreNormBlockAdapter(Adapter):
    """Families whose blocks are ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))`` over one joint sequence.

    Subclasses say where each part lives; the block forward and the merge point are written once here.
    """

    #: a class token at position 0 that must never be merged away
    protect_first: bool = True

    def qkv(self, layer: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor, float, float]:
        """Queries, keys, values (batch, heads, tokens, head dim), the logit scale and the attention dropout."""
        raise NotImplementedError

    def attention_residual(self, layer: nn.Module, attended: Tensor) -> Tensor:
        """What the attention branch adds to the residual stream (output projection, layer scale, dropout)."""
        raise NotImplementedError

    def norm1(self, layer: nn.Module) -> nn.Module:
        """The LayerNorm before attention, whose output the keys (and so the merge metric) come from."""
        raise NotImplementedError

    def mlp_residual(self, layer: nn.Module, x: Tensor) -> Tensor:
        """What the MLP branch adds to the residual stream, given the stream itself."""
        raise NotImplementedError

    def layer_forward(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        q, k, v, scale, dropout = self.qkv(layer, self.norm1(layer)(state.x))
        attended = attend(
            q,
            k,
            v,
            scale=scale,
            log_size=log_size(state.size, call.plan),
            implementation=self.implementation(layer),
            dropout=dropout if layer.training else 0.0,
        )
        state = state._replace(x=state.x + self.attention_residual(layer, attended))
        if call.r > 0:
            state = reduce_tokens(state, k.mean(dim=1), call, protect_first=self.protect_first)
        return state._replace(x=state.x + self.mlp_residual(layer, state.x))

    def merge_step(self, layer: nn.Module, state: TokenState, call: LayerCall) -> TokenState:
        _, k, _, _, _ = self.qkv(layer, self.norm1(layer)(state.x))
        return reduce_tokens(state, k.mean(dim=1), call, protect_first=self.protect_first)

    def implementation(self, layer: nn.Module) -> str:
        """The attention implementation the model was loaded with ("eager", "sdpa", ...)."""
        return self.config_of(layer)._attn_implementation

    def config_of(self, layer: nn.Module) -> object:
        """The block's configuration object."""
        raise NotImplementedError


def split_heads(x: Tensor, head_dim: int) -> Tensor:
    """(batch, tokens, heads * head dim) -> (batch, heads, tokens, head dim)."""
    return x.unflatten(-1, (-1, head_dim)).transpose(1, 2)


def project_heads(h: Tensor, projections: tuple[nn.Module, ...], head_dim: int) -> tuple[Tensor, ...]:
    """Apply each projection (queries, keys, values) to h and split it into heads: (batch, heads, tokens, head dim)."""
    return tuple(split_heads(project(h), head_dim) for project in projections)


def classification_output(model: nn.Module, pooled: Tensor, labels: Tensor | None) -> ImageClassifierOutput:
    """Logits from a Hugging Face classification model's ``classifier``, and its loss when labels are given."""
    logits = model.classifier(pooled)
    loss = None if labels is None else model.loss_function(labels, logits, model.config)
    return ImageClassifierOutput(loss=loss, logits=logits)

