"""Layer duplication (Pollard & Wray, Figure 7): what one layer's merging alone would merge.

The model runs unmerged up to layer K; then layer K's merging step is applied N times to the tokens entering it.
Each copy computes layer K's keys of the current tokens (its own norm and key projection) and matches and merges
them, nothing else: the features change only by merging. Works for any layer of any depth and any supported family.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..adapters import find_adapter
from ..adapters.base import LayerCall, TokenState
from ..plan import MergeSettings, build_plan, merge_settings
from ..stats import added_record, summarize


class Duplication(NamedTuple):
    """The result of :func:`duplicate_layer`: the tokens after the last copy (batch, tokens, C), their source map
    (batch, tokens, input tokens, in the model's order), and one statistics dict per copy (as
    :func:`videotome.layer_stats`, with ``layer`` the copy's number from 0)."""

    x: Tensor
    sources: Tensor
    stats: list[dict[str, Any]]


def duplicate_layer(
    model: nn.Module,
    pixel_values: Tensor,
    layer: int,
    times: int,
    settings: MergeSettings | int | float | None = None,
    /,
    **options: object,
) -> Duplication:
    """Apply layer ``layer``'s merging ``times`` times to the tokens entering it; r is that layer's r under
    ``settings`` (or the keyword ``options``, as :func:`videotome.patch` takes them), clamped at every copy."""
    adapter = find_adapter(model)
    if adapter is None:
        raise TypeError(f"{type(model).__name__} is not supported by videotome")
    layers = adapter.layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range; the model has layers 0 to {len(layers) - 1}")
    if times < 1:
        raise ValueError(f"times must be at least 1, got {times}")
    plan = build_plan(
        merge_settings(settings, **options),
        len(layers),
        adapter.layout(model),
        prop_attn_default=adapter.prop_attn_default,
        trace_source=True,
        record_stats=True,
        input_frames=adapter.joint_frames(model),
    )
    call = LayerCall(layer, plan.r[layer], plan)
    with torch.no_grad():
        x = adapter.embed(model, pixel_values)
        for block in layers[:layer]:
            x = adapter.run_original(block, x)
        state, steps = TokenState(x), []
        for copy in range(times):
            tokens_in, done = state.x.shape[1], len(state.records)
            state = adapter.merge_step(layers[layer], state, call) if call.r > 0 else state
            steps.append((copy, tokens_in, state.x.shape[1], added_record(state.records, done)))
    return Duplication(state.x, adapter.sources(state), summarize(steps))
