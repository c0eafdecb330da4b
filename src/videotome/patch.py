"""Patching a model: ``patch``, ``unpatch``, ``plan``, ``sources`` and ``layer_stats``.

Patching sets one attribute on the model instance, a :class:`Patch` holding the adapter and the immutable
:class:`~videotome.plan.MergePlan`, and replaces the instance's ``forward`` with :func:`merged_forward`. The classes,
the weights and every other instance are untouched, so :func:`unpatch` restores the original exactly.

The patched forward runs the model's own embedding, then its blocks one by one: a block before any merge runs the
model's own code (so r = 0 is bit-identical), later blocks run the adapter's merged forward, with sizes and source
maps passed from block to block as values, never stored on modules.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor, nn
from transformers.modeling_outputs import ModelOutput

from .adapters import ADAPTERS, find_adapter
from .adapters.base import Adapter, LayerCall, TokenState
from .dependencies import check_transformers
from .plan import MergePlan, MergeSettings, PlanSource, build_plan, merge_settings, plan_settings, r_for_flops
from .stats import added_record, summarize
from .vlm import models as vlm_models
from .vlm.reduce import VideoMergeSettings, video_settings

_ATTRIBUTE = "_videotome"


@dataclass
class Patch:
    """What a patched model carries: its adapter, its plan, and the source map and statistics of the last traced
    forward."""

    adapter: Adapter
    plan: MergePlan
    last_sources: Tensor | None = None
    last_stats: list[dict[str, Any]] | None = None


def patch(
    model: nn.Module,
    settings: MergeSettings | int | float | None = None,
    /,
    *,
    trace_source: bool = False,
    record_stats: bool = False,
    flops: float | None = None,
    plan: PlanSource | None = None,
    **options: object,
) -> nn.Module:
    """Make ``model`` reduce tokens in every layer; returns the same model, patched in place.

    ``settings`` is a :class:`~videotome.plan.MergeSettings`, or r as a number; ``options`` are its fields by name
    (``patch(model, r=150, strategy="drop")``; with a settings value they replace its fields). The fields:

    - ``r``: tokens removed per layer (per frame for divided space-time models): an int, or a float in (0, 1)
      meaning that fraction of the initial mergeable (non-class) token count. Each layer clamps it to
      (N - protected) // 2; :func:`plan` shows the clamped values.
    - ``schedule``: "constant", "increasing" (0 up to 2r), "decreasing" (2r down to 0), or one int per layer.
    - ``strategy``: "merge", "drop", "random_drop", "random_merge" or "hybrid" (merge pairs whose key cosine is
      >= ``threshold``, drop the others).
    - ``prop_attn``: proportional attention (log size added to attention logits); None takes the family's default.
    - ``divided``: for divided space-time models, "per_frame" (each frame matched on its own) or "aligned" (one
      matching from frame-averaged keys, the same merges in every frame).
    - ``seed``: the random strategies' seed (default 0); None draws from torch's global generator.

    ``trace_source`` keeps the map of which input tokens each output token holds; read it with :func:`sources`.
    ``record_stats`` keeps per-layer statistics of each forward (tokens, merges and drops, the chosen pairs' key
    cosines, the share of temporal merges); read them with :func:`layer_stats`. It traces sources too. Neither
    costs anything when off.
    ``flops`` (a ratio in (0, 1]) chooses r instead: the smallest r (the scale of a named schedule) whose predicted
    FLOPs are at most that share of the unmerged model's (:mod:`videotome.flops`); a target the model cannot reach
    is refused, naming the smallest reachable ratio. ``plan`` takes every setting from a plan (a :class:`MergePlan`,
    the dict of ``videotome tune --json``, or the path of its JSON file) made for a model of this shape.
    Patching an already patched model replaces its plan. A transformers version outside the tested range is
    refused here, since the adapters rely on its model classes' internals.
    """
    check_transformers()
    if vlm_models.find_family(model) is not None:
        if flops is not None or plan is not None or trace_source or record_stats:
            raise ValueError("a video-LLM takes keep= (or r=, the share removed) and the reduction options; flops=, "
                             "plan=, trace_source and record_stats are for video classifiers")
        given = settings if isinstance(settings, VideoMergeSettings) else None
        if settings is not None and given is None:
            options["r"] = settings
        return vlm_models.patch_vlm(model, video_settings(given, **options), _ATTRIBUTE)
    adapter = find_adapter(model)
    if adapter is None:
        supported = ", ".join([cls.__name__ for a in ADAPTERS for cls in a.classes] + vlm_models.supported_classes())
        raise TypeError(f"{type(model).__name__} is not supported by videotome.patch; supported classes: {supported}")
    num_layers, layout, cost = len(adapter.layers(model)), adapter.layout(model), adapter.cost(model)
    if plan is not None:
        if settings is not None or options or flops is not None:
            raise ValueError("plan= holds every merge setting; give it alone, without settings, r or flops")
        settings = plan_settings(plan, num_layers, layout)
    settings = merge_settings(settings, **options)
    if flops is not None:
        if settings.r != 0:
            raise ValueError(f"flops={flops} and r={settings.r} together: give one (flops= chooses r)")
        settings = replace(settings, r=r_for_flops(flops, build_plan(settings, num_layers, layout, cost=cost)))
    merge_plan = build_plan(
        settings,
        num_layers,
        layout,
        prop_attn_default=adapter.prop_attn_default,
        trace_source=trace_source or record_stats,
        record_stats=record_stats,
        input_frames=adapter.joint_frames(model) if record_stats else None,
        cost=cost,
    )
    setattr(model, _ATTRIBUTE, Patch(adapter, merge_plan))
    model.forward = types.MethodType(merged_forward, model)
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Restore the model's own forward; a model that is not patched is returned unchanged."""
    if hasattr(model, _ATTRIBUTE):
        record = getattr(model, _ATTRIBUTE)
        if isinstance(record, vlm_models.VLMPatch):
            record.undo(model)
        delattr(model, _ATTRIBUTE)
        del model.forward
    return model


def _patch_of(model: nn.Module) -> Patch:
    try:
        return getattr(model, _ATTRIBUTE)
    except AttributeError:
        raise ValueError(f"{type(model).__name__} is not patched; call videotome.patch(model, r) first") from None


def plan(model: nn.Module) -> MergePlan | vlm_models.VideoPlan:
    """The plan of a patched model; ``print`` it for the per-layer requested r, clamped r and token counts (for a
    video-LLM: per video of the last call, its grid and the tokens kept)."""
    record = _patch_of(model)
    if isinstance(record, vlm_models.VLMPatch):
        return vlm_models.video_plan(record)
    return record.plan


def sources(model: nn.Module) -> Tensor | list[Tensor]:
    """The (batch, final tokens, input tokens) 0/1 map of the last forward of a model patched with trace_source.

    Rows follow the output sequence, columns the embedding's input tokens, both in the model's own order; a
    column of zeros is a patch that was dropped. A patched video-LLM gives one (kept, visual tokens) map per video
    of its last call.
    """
    record = _patch_of(model)
    if isinstance(record, vlm_models.VLMPatch):
        return vlm_models.video_sources(record)
    return _recorded("sources", record.plan.trace_source, "trace_source", record.last_sources)


def layer_stats(model: nn.Module) -> list[dict[str, Any]]:
    """Per-layer statistics of the last forward of a model patched with ``record_stats=True``, one dict per layer:
    ``layer``, ``tokens_in``, ``tokens_out`` (whole sequence), ``merged`` and ``dropped`` (tokens per clip),
    ``cosine_mean``/``cosine_min``/``cosine_max`` (the chosen pairs' key cosine), ``temporal_share`` (joint space-time
    models: the share of merges joining tokens whose patches come from different frames). None where nothing
    applies (a layer that removed nothing, a divided or image model's temporal share)."""
    record = _patch_of(model)
    return _recorded("layer_stats", record.plan.record_stats, "record_stats", record.last_stats)


def _recorded(reader: str, kept: bool, option: str, value: Any) -> Any:
    """What a forward recorded for ``reader``, or the error that says why there is nothing."""
    if not kept:
        raise ValueError(f"{reader}() needs videotome.patch(model, r, {option}=True)")
    if value is None:
        raise ValueError(f"{reader}() has nothing yet: run a forward pass of the patched model first")
    return value


def token_grid(model: nn.Module) -> Tensor | list[Tensor]:
    """Where each of a supported model's input tokens sits: (input tokens, 3) of time step, patch row and patch
    column at the configured input size, in the model's own token order; -1 for a class token.

    With :func:`sources`, this paints each final token over the patches it holds. A patched video-LLM gives one
    (visual tokens, 3) grid per video of its last call (frame, row, column of its visual tokens).
    """
    record = getattr(model, _ATTRIBUTE, None)
    if isinstance(record, vlm_models.VLMPatch):
        return vlm_models.video_token_grid(record)
    adapter = find_adapter(model)
    if adapter is None:
        raise TypeError(f"{type(model).__name__} is not supported by videotome")
    return adapter.grid(model)


def merged_forward(
    self: nn.Module,
    pixel_values: Tensor,
    labels: Tensor | None = None,
    output_hidden_states: bool | None = None,
    return_dict: bool | None = None,
    **embedding_options: object,
) -> ModelOutput | tuple:
    """The forward of a patched model: the model's own embedding, merged blocks, the model's own head.

    ``output_hidden_states`` gives each block's output (their token counts shrink); ``embedding_options`` are
    passed to the embedding (``interpolate_pos_encoding``, ``bool_masked_pos`` where the family has them).
    """
    record: Patch = getattr(self, _ATTRIBUTE)
    adapter, merge_plan = record.adapter, record.plan
    state = TokenState(adapter.embed(self, pixel_values, **embedding_options))
    hidden_states = [state.x] if output_hidden_states else None
    layers = []
    for index, layer in enumerate(adapter.layers(self)):
        r = merge_plan.r[index]
        tokens_in, reductions = state.x.shape[1], len(state.records)
        if state.size is None and r == 0:
            state = state._replace(x=adapter.run_original(layer, state.x))
        else:
            state = adapter.layer_forward(layer, state, LayerCall(index, r, merge_plan))
        if hidden_states is not None:
            hidden_states.append(state.x)
        if merge_plan.record_stats:
            layers.append((index, tokens_in, state.x.shape[1], added_record(state.records, reductions)))
    if merge_plan.trace_source:
        record.last_sources = adapter.sources(state)
    if merge_plan.record_stats:
        record.last_stats = summarize(layers)
    output = adapter.finish(self, state, labels)
    if hidden_states is not None:
        output["hidden_states"] = tuple(hidden_states)
    return output if return_dict is not False else output.to_tuple()
