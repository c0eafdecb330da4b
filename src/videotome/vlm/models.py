"""Video-LLMs from transformers: their visual tokens reduced between the vision tower and the language model.

Everything goes through the classes' public API. The model's own ``get_video_features`` encodes the video; one
:func:`~videotome.vlm.reduce.reduce_video` per video reduces its grid of visual tokens; the reduced features reach the
language model as ``mm_encoder_outputs`` (the argument forward and generate take for precomputed features), with the
video's placeholder tokens shortened to match. Positions come from the model's own position logic
(``_prepare_position_ids_for_generation``, which generate itself calls: 1-D from the attention mask for the LLaVA
classes, the 3-D M-RoPE index for the Qwen classes) on the FULL sequence, and each kept token keeps its position; an
attention mask always goes with them (gapped positions without one read as packed sequences).

Two position families, one class each: :class:`LlavaFamily` (LLaVA-OneVision, LLaVA-NeXT-Video, Video-LLaVA:
1-D positions) and :class:`QwenFamily` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: M-RoPE; Qwen3's DeepStack features are
pooled over the same groups).

Proportional attention (the paper's log size added to each visual key's logits) runs in the language model through
transformers' attention-function registry: ``videotome_sdpa`` is SDPA with the sizes' logs as an additive bias over
the keys, at prefill and at every decode step (generated keys get 0). It needs a float bias, so it replaces only
``sdpa``; a model on another kernel (flash attention) gets a warning and no proportional attention.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import warnings
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .reduce import VideoMergeSettings, VideoReduction, reduce_video, video_settings

#: the keyword that carries each kept token's log size to the attention function
LOG_SIZE_KEY = "videotome_log_size"
ATTENTION = "videotome_sdpa"


class VideoRecord(NamedTuple):
    """One video of a prepared batch: its grid of visual tokens (frames x rows x columns) and its reduction."""

    frames: int
    rows: int
    cols: int
    reduction: VideoReduction


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` returns: the keyword arguments for the model's forward or generate, which of the
    caller's sequence positions they keep (``kept``, (batch, kept length)), and each video's record."""

    kwargs: dict[str, Any]
    kept: Tensor
    videos: list[VideoRecord]


class Family:
    """What one position family knows: its classes, how its features for one video lie, how to put reduced
    features back. Subclasses name the classes by their transformers names (imported lazily)."""

    class_names: tuple[str, ...] = ()
    position_kind = ""

    def classes(self) -> tuple[type, ...]:
        import transformers

        return tuple(getattr(transformers, name) for name in self.class_names)

    def encode(self, model: nn.Module, inputs: Mapping[str, Any]) -> Any:
        """The model's own video features (its ``get_video_features``)."""
        raise NotImplementedError

    def runs(self, model: nn.Module, output: Any, inputs: Mapping[str, Any]) -> list[tuple[Tensor, Tensor]]:
        """Per video: its placeholder run's features (L, C) and the grid (T, H, W) of run indices to reduce; run
        tokens outside the grid (a newline, a frame's class token) are protected."""
        raise NotImplementedError

    def extras(self, output: Any, video: int) -> list[Tensor]:
        """Further per-token features of one video that must follow the reduction (Qwen3's DeepStack)."""
        return []

    def rebuild(self, output: Any, runs: list[Tensor], extras: list[list[Tensor]]) -> Any:
        """The encoder output with the reduced runs in the family's layout."""
        raise NotImplementedError


class LlavaFamily(Family):
    """LLaVA-OneVision, LLaVA-NeXT-Video and Video-LLaVA: one (B, L, C) block of video features, 1-D positions."""

    class_names = ("LlavaOnevisionForConditionalGeneration", "LlavaNextVideoForConditionalGeneration",
                   "VideoLlavaForConditionalGeneration")
    position_kind = "1-D"

    def encode(self, model: nn.Module, inputs: Mapping[str, Any]) -> Any:
        return model.base_model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"], return_dict=True)

    def runs(self, model: nn.Module, output: Any, inputs: Mapping[str, Any]) -> list[tuple[Tensor, Tensor]]:
        batch, frames = inputs["pixel_values_videos"].shape[:2]
        features = output.pooler_output.reshape(batch, -1, output.pooler_output.shape[-1])
        length = features.shape[1]
        name = type(model).__name__
        if name.startswith("LlavaOnevision"):  # frames' tokens, then one newline token
            grid = torch.arange(length - 1).view(frames, -1)
        elif name.startswith("VideoLlava"):  # each frame: its class token, then its patches
            grid = torch.arange(length).view(frames, -1)[:, 1:]
        else:
            grid = torch.arange(length).view(frames, -1)
        side = math.isqrt(grid.shape[1])
        return [(features[b], grid.view(frames, side, -1)) for b in range(batch)]

    def rebuild(self, output: Any, runs: list[Tensor], extras: list[list[Tensor]]) -> Any:
        output.pooler_output = torch.stack(runs)  # one (B, T, ...) video tensor: every run keeps the same count
        return output


class QwenFamily(Family):
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL: a tuple of per-video features laid out by ``video_grid_thw``, M-RoPE."""

    class_names = ("Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                   "Qwen3VLForConditionalGeneration")
    position_kind = "M-RoPE"

    def encode(self, model: nn.Module, inputs: Mapping[str, Any]) -> Any:
        return model.base_model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                   video_grid_thw=inputs["video_grid_thw"], return_dict=True)

    def runs(self, model: nn.Module, output: Any, inputs: Mapping[str, Any]) -> list[tuple[Tensor, Tensor]]:
        merge = model.config.vision_config.spatial_merge_size
        grids = inputs["video_grid_thw"].tolist()
        return [(features, torch.arange(features.shape[0]).view(t, h // merge, w // merge))
                for features, (t, h, w) in zip(output.pooler_output, grids)]

    def extras(self, output: Any, video: int) -> list[Tensor]:
        return [layer[video] for layer in getattr(output, "deepstack_features", None) or []]

    def rebuild(self, output: Any, runs: list[Tensor], extras: list[list[Tensor]]) -> Any:
        output.pooler_output = tuple(runs)
        if getattr(output, "deepstack_features", None):
            output.deepstack_features = [tuple(video[layer] for video in extras)
                                         for layer in range(len(output.deepstack_features))]
        return output


FAMILIES: tuple[Family, ...] = (LlavaFamily(), QwenFamily())


def is_qwen(model: nn.Module) -> bool:
    """Whether ``model`` is of the M-RoPE family (:class:`QwenFamily`), whose inputs carry ``video_grid_thw``."""
    return isinstance(find_family(model), QwenFamily)


def find_family(model: nn.Module) -> Family | None:
    """The position family of a supported video-LLM, or None."""
    for family in FAMILIES:
        if isinstance(model, family.classes()):
            return family
    return None


def supported_classes() -> list[str]:
    """The names of every supported video-LLM class."""
    return [name for family in FAMILIES for name in family.class_names]


def _pool(values: Tensor, reduction: VideoReduction) -> Tensor:
    """Size-weighted means (K, C) of per-token ``values`` (N, C) over the reduction's groups (dropped tokens left
    out): the same groups the features were merged over."""
    kept = reduction.assignment >= 0
    total = torch.zeros(reduction.size.numel(), values.shape[-1], dtype=torch.float32, device=values.device)
    total.index_add_(0, reduction.assignment[kept], values[kept].float())
    return (total / reduction.size.unsqueeze(-1)).to(values.dtype)


def _generator(settings: VideoMergeSettings, device: torch.device) -> torch.Generator | None:
    if settings.seed is None or not settings.strategy.startswith("random"):
        return None
    return torch.Generator(device=device).manual_seed(settings.seed)


def prepare(model: nn.Module, inputs: Mapping[str, Any], settings: VideoMergeSettings | None = None, *,
            prop_attn: bool = False, generate: bool = False, **options: Any) -> Prepared:
    """The keyword arguments that give ``model`` (a supported video-LLM) the inputs a processor made, with each
    video's visual tokens reduced by ``settings`` (or ``keep=``/``r=`` and the other :class:`VideoMergeSettings`
    fields as ``options``): ``model(**prepared.kwargs)``, or ``model.generate(**prepared.kwargs)`` with
    ``generate=True``. Pure: the model is not changed. One video per sequence.

    Positions are the ones the model itself would use on the full sequence: the caller's ``position_ids``; else, for
    ``generate``, generate's own (from the attention mask, or the M-RoPE index); for a forward pass, the forward's
    own (the M-RoPE index for Qwen, 0 .. L-1 for the 1-D families, whose forward does not read the mask for them).
    ``prop_attn`` adds each kept token's log size for the ``videotome_sdpa`` attention, which only a patched model
    runs (:func:`videotome.patch`); sizes that are all 1 (nothing merged) add nothing, so such a run is the plain
    model's.
    """
    settings = video_settings(settings, **options)
    family = find_family(model)
    if family is None:
        raise TypeError(f"{type(model).__name__} is not a supported video-LLM; supported: {supported_classes()}")
    if inputs.get("pixel_values_videos") is None:
        raise ValueError("the inputs hold no video (no pixel_values_videos): give the processor's output for a video")
    if inputs.get("input_ids") is None:
        raise ValueError("the inputs hold no input_ids: give the processor's output (text and video)")
    input_ids = inputs["input_ids"]
    attention_mask = inputs.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    full = {**inputs, "attention_mask": attention_mask}
    positions = _full_positions(model, family, full, generate)
    output = family.encode(model, inputs)
    placeholder = input_ids == model.config.video_token_id
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    log_size = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    runs, extras, videos = [], [], []
    per_video = family.runs(model, output, inputs)
    if len(per_video) != input_ids.shape[0]:
        raise ValueError(f"{len(per_video)} videos for {input_ids.shape[0]} sequences: give one video per sequence")
    for index, (features, grid) in enumerate(per_video):
        places = placeholder[index].nonzero()[:, 0]
        if places.numel() != features.shape[0]:
            raise ValueError(f"sequence {index} has {places.numel()} video placeholder tokens for "
                             f"{features.shape[0]} video features")
        frames, rows, cols = grid.shape
        per_frame = rows * cols
        flat = grid.flatten().to(features.device)
        reduced, reduction = reduce_video(features[flat].view(frames, per_frame, -1), settings,
                                          generator=_generator(settings, features.device))
        run_keep = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
        run_keep[flat] = False
        run_keep[flat[reduction.position]] = True
        new_run = features.clone()
        new_run[flat[reduction.position]] = reduced.to(features.dtype)
        sizes = torch.ones(features.shape[0], device=features.device)
        sizes[flat[reduction.position]] = reduction.size
        runs.append(new_run[run_keep])
        extras.append([_replace(extra, flat, reduction, run_keep) for extra in family.extras(output, index)])
        keep[index, places] = run_keep
        log_size[index, places] = sizes.log()
        videos.append(VideoRecord(frames, rows, cols, reduction))
    lengths = keep.sum(-1)
    if len(set(lengths.tolist())) > 1:
        raise ValueError(f"the batch's sequences keep different lengths {lengths.tolist()}: give each sample the same "
                         f"video length (frames and size)")
    kept = keep.nonzero()[:, 1].view(input_ids.shape[0], -1)
    kwargs = {key: value for key, value in inputs.items()
              if key not in ("pixel_values_videos", "input_ids", "attention_mask", "mm_token_type_ids")}
    kwargs["input_ids"] = input_ids.gather(1, kept)
    kwargs["attention_mask"] = attention_mask.gather(1, kept)
    if inputs.get("mm_token_type_ids") is not None:
        kwargs["mm_token_type_ids"] = inputs["mm_token_type_ids"].gather(1, kept)
    kwargs["position_ids"] = _positions(model, family, settings, positions, kept, kwargs)
    kwargs["mm_encoder_outputs"] = {"video": family.rebuild(output, runs, extras)}
    bias = log_size.gather(1, kept)
    if prop_attn and bool(bias.any()):
        kwargs[LOG_SIZE_KEY] = bias
    return Prepared(kwargs, kept, videos)


def _full_positions(model: nn.Module, family: Family, inputs: Mapping[str, Any], generate: bool) -> Tensor:
    """The positions the model would give the full sequence (see :func:`prepare`)."""
    if inputs.get("position_ids") is not None:
        return inputs["position_ids"]
    input_ids = inputs["input_ids"]
    if generate or family.position_kind != "1-D":
        return _own_positions(model, input_ids, inputs)
    return torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)


def _own_positions(model: nn.Module, input_ids: Tensor, inputs: Mapping[str, Any]) -> Tensor:
    """The positions generate itself would give ``input_ids``; the M-RoPE classes' ``rope_deltas``, which that call
    stores on the model, is put back, so that :func:`prepare` leaves the model as it was."""
    stored = getattr(model.base_model, "rope_deltas", None)
    try:
        return model._prepare_position_ids_for_generation(input_ids, dict(inputs))
    finally:
        if hasattr(model.base_model, "rope_deltas"):
            model.base_model.rope_deltas = stored


def _replace(extra: Tensor, flat: Tensor, reduction: VideoReduction, run_keep: Tensor) -> Tensor:
    """A per-token feature of one video's run reduced over the same groups as its features."""
    out = extra.clone()
    out[flat[reduction.position]] = _pool(extra[flat], reduction)
    return out[run_keep]


def _positions(model: nn.Module, family: Family, settings: VideoMergeSettings, full: Tensor, kept: Tensor,
               kwargs: Mapping[str, Any]) -> Tensor:
    """The kept tokens' positions: their positions in the full sequence, or (``compact``) the model's own
    positions of the shortened sequence, which only 1-D families can compute."""
    if settings.positions == "compact":
        if family.position_kind != "1-D":
            raise ValueError(f"positions='compact' needs 1-D positions; {type(model).__name__} uses M-RoPE, whose "
                             f"3-D index cannot be computed for a shortened video")
        return _own_positions(model, kwargs["input_ids"], kwargs)
    if full.dim() == 2:
        return full.gather(1, kept)
    return full.gather(2, kept.unsqueeze(0).expand(full.shape[0], -1, -1))


def log_size_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                       **kwargs: Any) -> tuple[Tensor, Any]:
    """SDPA with proportional attention: the prompt's log sizes (``videotome_log_size``, (B, L)) added to the
    logits of each key, zeros for the keys generated after the prompt."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    log_size = kwargs.pop(LOG_SIZE_KEY, None)
    if log_size is not None:
        keys = key.shape[2]
        bias = torch.nn.functional.pad(log_size, (0, keys - log_size.shape[1]))[:, :keys]
        kwargs["position_bias"] = bias[:, None, None, :].to(query.dtype)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_attention() -> None:
    """Register ``videotome_sdpa`` with transformers' attention and mask registries (SDPA's own mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, log_size_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def text_config(model: nn.Module) -> Any:
    """The language model's configuration, whose attention implementation proportional attention replaces."""
    return model.config.get_text_config()


def proportional_attention(model: nn.Module, requested: bool | None) -> bool:
    """Whether proportional attention can run: on by default where the language model uses SDPA; elsewhere a
    warning when it was asked for (or left to its default), and off."""
    if requested is False:
        return False
    implementation = text_config(model)._attn_implementation
    if implementation in ("sdpa", ATTENTION):
        return True
    warnings.warn(f"proportional attention needs the language model's attention to take a float bias (sdpa); "
                  f"{type(model).__name__} uses {implementation!r}, so it runs without it", stacklevel=3)
    return False


@dataclasses.dataclass
class VLMPatch:
    """What a patched video-LLM carries: its family, settings, whether proportional attention runs (and the
    attention implementation it replaced), and the per-video records of the last call."""

    family: Family
    settings: VideoMergeSettings
    prop_attn: bool
    replaced_attention: str | None = None
    last: list[VideoRecord] | None = None

    def undo(self, model: nn.Module) -> None:
        """Restore what :func:`patch_vlm` changed besides the instance's ``forward`` and ``generate``."""
        del model.generate
        if self.replaced_attention is not None:
            text_config(model)._attn_implementation = self.replaced_attention

    def records(self) -> list[VideoRecord]:
        """The last call's per-video records, or the error that says why there are none."""
        if self.last is None:
            raise ValueError("nothing recorded yet: run a forward or generate call of the patched model first")
        return self.last


def patch_vlm(model: nn.Module, settings: VideoMergeSettings, attribute: str) -> nn.Module:
    """Patch a supported video-LLM in place: its ``forward`` and ``generate`` reduce each video's visual tokens."""
    family = find_family(model)
    prop_attn = settings.reduces and proportional_attention(model, settings.prop_attn)
    previous = getattr(model, attribute, None)
    replaced = previous.replaced_attention if isinstance(previous, VLMPatch) else None
    if previous is not None:
        previous.undo(model)
    record = VLMPatch(family, settings, prop_attn)
    if prop_attn:
        register_attention()
        record.replaced_attention = replaced or text_config(model)._attn_implementation
        text_config(model)._attn_implementation = ATTENTION
    setattr(model, attribute, record)
    model.forward = _with_signature(types.MethodType(_forward, model), type(model).forward)
    model.generate = types.MethodType(_generate, model)
    return model


def _with_signature(method: Any, original: Any) -> Any:
    """``method`` presented with ``original``'s parameters plus ``videotome_log_size``: generate checks its inputs
    against the forward's signature."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    signature = inspect.signature(original)
    parameters = [p for p in signature.parameters.values() if p.name != "self"]
    extra = inspect.Parameter(LOG_SIZE_KEY, inspect.Parameter.KEYWORD_ONLY, default=None)
    position = next((i for i, p in enumerate(parameters) if p.kind is inspect.Parameter.VAR_KEYWORD), len(parameters))
    forward.__signature__ = signature.replace(parameters=[*parameters[:position], extra, *parameters[position:]])
    forward.__doc__ = method.__doc__
    return forward


def patch_record(model: nn.Module) -> VLMPatch:
    """What a patched video-LLM carries (:class:`VLMPatch`): its settings and whether proportional attention runs."""
    return next(value for value in vars(model).values() if isinstance(value, VLMPatch))


def _as_keywords(function: Any, self: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's positional arguments named by ``function``'s signature, so that ``model(input_ids, ...)`` is
    reduced like ``model(input_ids=..., ...)``; a call that does not fit the signature gets Python's own error."""
    if not args:
        return kwargs
    signature = inspect.signature(function)
    named: dict[str, Any] = {}
    for name, value in list(signature.bind(self, *args, **kwargs).arguments.items())[1:]:
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{function.__qualname__} got {len(value)} positional arguments more than it names")
        named.update(value if kind is inspect.Parameter.VAR_KEYWORD else {name: value})
    return named


def _forward(self: nn.Module, *args: Any, videotome_log_size: Tensor | None = None, **kwargs: Any) -> Any:
    """A patched video-LLM's forward: inputs with video pixels are reduced first; anything else (generate's own
    steps, which carry the reduced features) goes to the class's forward unchanged. The logits cover the reduced
    sequence. ``videotome_log_size`` (named here so that generate accepts it) carries the sizes to the attention."""
    if videotome_log_size is not None:
        kwargs[LOG_SIZE_KEY] = videotome_log_size
    kwargs = _as_keywords(type(self).forward, self, args, kwargs)
    if kwargs.get("pixel_values_videos") is None:
        return type(self).forward(self, **kwargs)
    record = patch_record(self)
    prepared = prepare(self, kwargs, record.settings, prop_attn=record.prop_attn)
    record.last = prepared.videos
    return type(self).forward(self, **prepared.kwargs)


def _generate(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A patched video-LLM's generate: the reduced prompt goes to the class's generate, and the output starts with
    the caller's own prompt ids, so ``out[:, prompt_length:]`` is the answer as without merging."""
    kwargs = _as_keywords(type(self).generate, self, args, kwargs)
    if kwargs.get("inputs") is not None:  # generate's first parameter: the prompt ids of a decoder-only model
        kwargs["input_ids"] = kwargs.pop("inputs")
    if kwargs.get("pixel_values_videos") is None:
        return type(self).generate(self, **kwargs)
    record = patch_record(self)
    prepared = prepare(self, kwargs, record.settings, prop_attn=record.prop_attn, generate=True)
    record.last = prepared.videos
    output = type(self).generate(self, **prepared.kwargs)
    shortened = prepared.kwargs["input_ids"].shape[1]
    sequences = output if isinstance(output, Tensor) else output.sequences
    whole = torch.cat([kwargs["input_ids"], sequences[:, shortened:]], dim=1)
    if isinstance(output, Tensor):
        return whole
    output.sequences = whole
    return output


def video_sources(record: VLMPatch) -> list[Tensor]:
    """Per video of the last call: the (kept tokens, input tokens) 0/1 map of which visual tokens each kept token
    holds (a zero column: a dropped token)."""
    maps = []
    for video in record.records():
        assignment = video.reduction.assignment
        kept = video.reduction.size.numel()
        grid = torch.zeros(kept, assignment.numel())
        held = assignment >= 0
        grid[assignment[held], torch.arange(assignment.numel())[held]] = 1
        maps.append(grid)
    return maps


def video_token_grid(record: VLMPatch) -> list[Tensor]:
    """Per video of the last call: (input tokens, 3) of each visual token's frame, row and column."""
    grids = []
    for video in record.records():
        t, h, w = torch.meshgrid(torch.arange(video.frames), torch.arange(video.rows), torch.arange(video.cols),
                                 indexing="ij")
        grids.append(torch.stack([t.flatten(), h.flatten(), w.flatten()], dim=1))
    return grids


@dataclasses.dataclass(frozen=True)
class VideoPlan:
    """The plan of a patched video-LLM: its settings and, per video of the last call, the grid and the tokens the
    language model saw of it."""

    settings: VideoMergeSettings
    videos: tuple[tuple[int, int, int, int], ...]  # frames, rows, cols, kept tokens

    def __str__(self) -> str:
        head = (f"video-LLM reduction: keep {self.settings.keep:g}, {self.settings.strategy}, {self.settings.mode}, "
                f"positions {self.settings.positions}")
        lines = [f"video {index}: {frames} x {rows} x {cols} = {frames * rows * cols} visual tokens -> {kept}"
                 for index, (frames, rows, cols, kept) in enumerate(self.videos)]
        return "\n".join([head, *lines])


def video_plan(record: VLMPatch) -> VideoPlan:
    """The :class:`VideoPlan` of the last call."""
    return VideoPlan(record.settings, tuple((v.frames, v.rows, v.cols, v.reduction.size.numel())
                                            for v in record.records()))
