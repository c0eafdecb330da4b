"""Merge settings and the merge plan: what the user asks for, and per-layer r fixed before any forward pass.

:class:`MergeSettings` is the one description of a reduction setting (r, schedule, strategy, threshold, proportional
attention, divided mode, seed): :func:`videotome.patch` takes it, results files store it, and every command's flags
are made from its fields. A plan is immutable: :func:`videotome.patch` builds one and the patched forward only reads
it, so a patched model is safe under ``torch.compile``, ``torch.inference_mode`` and concurrent use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace

from .flops import ModelCost
from .merge import STRATEGIES, clamp_r

SCHEDULES = ("constant", "increasing", "decreasing")
DIVIDED_MODES = ("per_frame", "aligned")


@dataclass(frozen=True)
class TokenLayout:
    """How a model's token sequence divides for merging.

    ``groups`` sequences of ``tokens_per_group`` tokens merge independently (the frames of a divided
    space-time model; one group for joint models), each keeping its first ``protected`` tokens, plus
    ``shared`` tokens outside every group (the divided models' class token).
    """

    groups: int
    tokens_per_group: int
    protected: int = 0
    shared: int = 0

    def total(self, tokens_per_group: int) -> int:
        """Length of the whole sequence when each group holds ``tokens_per_group`` tokens."""
        return self.groups * tokens_per_group + self.shared


@dataclass(frozen=True)
class LayerStep:
    """One layer's line of the plan, for the model's configured input size; ``flops`` is the block's predicted FLOPs
    over the unmerged block's (None when the plan has no :class:`~videotome.flops.ModelCost`)."""

    layer: int
    requested_r: int
    effective_r: int
    tokens_in: int
    tokens_out: int
    flops: float | None = None


def check_r(value: int | float) -> int | float:
    """r as the API takes it: an int >= 0 is tokens per layer, a float in (0, 1) a fraction of the initial mergeable
    tokens; anything else is refused, naming the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"r={value!r} must be an int >= 0 or a float fraction in (0, 1)")
    if value < 0:
        raise ValueError(f"r={value!r} must be >= 0 (tokens merged per layer)")
    if isinstance(value, float) and value >= 1:
        raise ValueError(f"r={value!r}: a float r is a fraction of the initial token count and must be in (0, 1)")
    return value


def read_r(text: str) -> int | float:
    """r from the command line, by the API's rule (:func:`check_r`): text that reads as an int ("8") is an int,
    anything else a float ("0.1"; "1.0" is the float 1.0, refused as the API refuses it)."""
    try:
        value: int | float = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"r must be an integer >= 0 or a fraction in (0, 1), got {text!r}") from None
    return check_r(value)


def read_schedule(value: str | Sequence[int]) -> str | tuple[int, ...]:
    """A schedule name, or one non-negative int per layer (a sequence, or text such as "4,4,2,0")."""
    if isinstance(value, str):
        if value in SCHEDULES:
            return value
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(f"schedule={value!r} is not one of {SCHEDULES} or a list of ints") from None
    values = tuple(value)
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(f"schedule value {item!r} is not a non-negative int")
    return values


SWITCH_WORDS = {"on": True, "off": False, "default": None}


def read_switch(text: str) -> bool | None:
    """A switch that may be left to a default, from the command line: "on", "off" or "default" (None)."""
    if text not in SWITCH_WORDS:
        raise ValueError(f"expected one of {tuple(SWITCH_WORDS)}, got {text!r}")
    return SWITCH_WORDS[text]


def _option(help: str, **more: object) -> dict[str, object]:
    """Field metadata from which every command's flags are made (:func:`videotome.options.add_options`)."""
    return {"help": help, **more}


@dataclass(frozen=True)
class MergeSettings:
    """How a model reduces its tokens: what :func:`videotome.patch` takes, results files store, and every command's
    reduction flags are made from. Values are checked here, before any model is touched; checks that need the model
    (how many layers a schedule list needs) come when the plan is built."""

    r: int | float = field(
        default=0,
        metadata=_option(
            "tokens removed per layer (per frame for divided models): an int, or a fraction in (0, 1) of the "
            "initial tokens; 0 leaves the model as it is",
            parse=read_r, flag="--reduce", aliases=("--r",), metavar="R",
        ),
    )
    schedule: str | tuple[int, ...] = field(
        default="constant",
        metadata=_option(f"one of {', '.join(SCHEDULES)}, or one int per layer (4,4,2,...)", parse=read_schedule),
    )
    strategy: str = field(default="merge", metadata=_option("how tokens are removed", choices=STRATEGIES))
    threshold: float | None = field(
        default=None, metadata=_option("cosine at or above which the hybrid strategy merges (else drops)")
    )
    prop_attn: bool | None = field(
        default=None,
        metadata=_option("proportional attention: on, off, or the family's default", parse=read_switch,
                         choices=tuple(SWITCH_WORDS)),
    )
    divided: str = field(
        default="per_frame",
        metadata=_option("divided space-time models: match each frame alone, or once per clip", choices=DIVIDED_MODES),
    )
    seed: int | None = field(default=0, metadata=_option("seed of the random strategies (None: torch's generator)"))

    def __post_init__(self) -> None:
        check_r(self.r)
        object.__setattr__(self, "schedule", read_schedule(self.schedule))
        if self.prop_attn is not None and not isinstance(self.prop_attn, bool):
            raise ValueError(f"prop_attn={self.prop_attn!r} must be True, False or None (the family's default)")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} is not one of {STRATEGIES}")
        if self.threshold is not None:
            if self.strategy != "hybrid":
                raise ValueError(
                    f"threshold={self.threshold!r} applies only to strategy='hybrid', not {self.strategy!r}"
                )
            if isinstance(self.threshold, bool) or not -1.0 <= float(self.threshold) <= 1.0:
                raise ValueError(f"threshold={self.threshold!r} must be a cosine similarity in [-1, 1]")
            object.__setattr__(self, "threshold", float(self.threshold))
        elif self.strategy == "hybrid":
            raise ValueError("strategy='hybrid' needs threshold=, a cosine similarity in [-1, 1]")
        if self.divided not in DIVIDED_MODES:
            raise ValueError(f"divided={self.divided!r} is not one of {DIVIDED_MODES}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed={self.seed!r} must be an int or None")

    @property
    def reduces(self) -> bool:
        """Whether these settings remove any token (r = 0 with a named schedule leaves the model as it is)."""
        return self.r != 0 or (not isinstance(self.schedule, str) and any(self.schedule))

    def canonical(self) -> MergeSettings:
        """The settings that decide a model's outputs: every setting that removes nothing is the default one."""
        return self if self.reduces else MergeSettings()

    def to_dict(self) -> dict[str, object]:
        """Plain JSON values (a schedule list as a list), as results files store them."""
        values = asdict(self)
        if isinstance(self.schedule, tuple):
            values["schedule"] = list(self.schedule)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> MergeSettings:
        """The inverse of :meth:`to_dict`; an unknown key is refused, naming it."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown merge settings {unknown}; expected {[f.name for f in fields(cls)]}")
        return cls(**values)


def merge_settings(settings: MergeSettings | int | float | None = None, **options: object) -> MergeSettings:
    """Settings from what a caller passed: a :class:`MergeSettings` (``options`` replace its fields), or r as a
    number, or nothing, with any field as a keyword. An unknown keyword is refused, naming the accepted ones."""
    names = [f.name for f in fields(MergeSettings)]
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unknown merge options {unknown}; expected some of {names}")
    if isinstance(settings, MergeSettings):
        return replace(settings, **options)
    if settings is not None:
        if "r" in options:
            raise TypeError("r given twice: as the settings argument and as r=")
        options["r"] = settings
    return MergeSettings(**options)


@dataclass(frozen=True)
class MergePlan:
    """Everything a patched forward needs to know, fixed at patch time.

    ``r`` holds the requested tokens to remove per layer (per group: per frame for divided models); each layer
    clamps it to what its current sequence allows, as :meth:`steps` reports. ``prop_attn`` is the settings' value
    with the family's default filled in. ``record_stats`` keeps per-layer statistics of each forward
    (:func:`videotome.layer_stats`); ``input_frames`` is then each input token's frame (-1 for a class token) for
    joint space-time models, whose merges can join frames, and None for the others. ``free_removal`` (benchmarks
    only, not a user setting) removes the same number of tokens by a free slice instead of the strategy: the
    zero-cost ideal that ``benchmarks/limit.py`` times the merged model against. ``cost`` is the model's analytic
    FLOP count (:mod:`videotome.flops`), from which the plan predicts its FLOPs; None predicts nothing.
    """

    r: tuple[int, ...]
    layout: TokenLayout
    settings: MergeSettings
    prop_attn: bool
    trace_source: bool = False
    record_stats: bool = False
    input_frames: tuple[int, ...] | None = None
    free_removal: bool = False
    cost: ModelCost | None = None

    def _layers(self) -> list[tuple[int, int, int, int, int]]:
        """Per layer: requested r, clamped r, tokens per group before and after, and FLOPs (0 without a cost)."""
        layers = []
        per_group = self.layout.tokens_per_group
        random = self.settings.strategy.startswith("random")
        matchings = 1 if self.settings.divided == "aligned" else self.layout.groups
        for requested in self.r:
            effective = clamp_r(requested, per_group, self.layout.protected)
            matched = 0 if random or effective == 0 else matchings
            flops = 0 if self.cost is None else self.cost.layer(per_group, per_group - effective, matched)
            layers.append((requested, effective, per_group, per_group - effective, flops))
            per_group -= effective
        return layers

    def steps(self) -> list[LayerStep]:
        """Per layer: requested r, clamped r, the whole sequence's length before and after, and the block's
        predicted FLOPs over the unmerged block's."""
        unmerged = None if self.cost is None else self.cost.layer(*(self.layout.tokens_per_group,) * 2, 0)
        return [
            LayerStep(layer, requested, effective, self.layout.total(before), self.layout.total(after),
                      None if unmerged is None else flops / unmerged)
            for layer, (requested, effective, before, after, flops) in enumerate(self._layers())
        ]

    def flops(self) -> tuple[int, int] | None:
        """Predicted FLOPs per input sample (a clip; an image for image models), merged and unmerged; None without
        a cost."""
        if self.cost is None:
            return None
        merged = self.cost.outside + sum(layer[-1] for layer in self._layers())
        return merged, self.cost.unmerged(self.layout.tokens_per_group)

    @property
    def flop_ratio(self) -> float | None:
        """Predicted FLOPs of the merged model over the unmerged model's; None without a cost."""
        counts = self.flops()
        return None if counts is None else counts[0] / counts[1]

    def to_dict(self) -> dict[str, object]:
        """The plan file (``videotome tune --json``, ``patch(model, plan=...)``): the settings, and the layers and
        token layout of the model they were made for."""
        return {"layers": len(self.r), "layout": asdict(self.layout), "settings": self.settings.to_dict()}

    def __str__(self) -> str:
        settings = self.settings
        schedule = settings.schedule if isinstance(settings.schedule, str) else "explicit"
        header = (
            f"MergePlan(strategy={settings.strategy}, schedule={schedule}, prop_attn={self.prop_attn}, "
            f"divided={settings.divided}, threshold={settings.threshold}, groups={self.layout.groups})"
        )
        counts = self.flops()
        lines = [header]
        if counts is not None:
            lines.append(f"predicted FLOPs: {counts[0] / counts[1]:.3f} of the unmerged model "
                         f"({counts[0] / 1e9:.3g} of {counts[1] / 1e9:.3g} GFLOPs per input sample)")
        lines.append("layer  requested_r  effective_r  tokens_in  tokens_out" + ("  flops" if counts else ""))
        for s in self.steps():
            flops = "" if s.flops is None else f"  {s.flops:>5.3f}"
            lines.append(
                f"{s.layer:>5}  {s.requested_r:>11}  {s.effective_r:>11}  {s.tokens_in:>9}  {s.tokens_out:>10}{flops}"
            )
        return "\n".join(lines)


def schedule_r(r: int, num_layers: int, schedule: str | Sequence[int]) -> tuple[int, ...]:
    """Per-layer r for a schedule.

    ``constant``: r everywhere. ``increasing``: int(0 + i * 2r / (L - 1)) for layer i of L; ``decreasing``: the same
    ramp from 2r down to 0; both request about r * L in all, like the constant schedule. A sequence is taken as
    given, one non-negative int per layer.
    """
    schedule = read_schedule(schedule)
    if not isinstance(schedule, str):
        if len(schedule) != num_layers:
            raise ValueError(f"schedule has {len(schedule)} values; expected one per layer ({num_layers})")
        return schedule
    if schedule == "constant" or num_layers == 1:
        return (r,) * num_layers
    start, stop = (0, 2 * r) if schedule == "increasing" else (2 * r, 0)
    step = (stop - start) / (num_layers - 1)
    return tuple(int(start + step * i) for i in range(num_layers))


def resolve_r(r: int | float, layout: TokenLayout) -> int:
    """Tokens per layer from an int, or from a fraction in (0, 1) of each group's initial mergeable tokens."""
    if isinstance(check_r(r), float):
        return int(r * (layout.tokens_per_group - layout.protected))
    return r


#: the paper's operating point: share of the initial tokens removed per layer (per frame for divided models)
OPERATING_SHARE = {"joint": 0.096, "divided": 18 / 196}


def operating_r(layout: TokenLayout, share: float | None = None) -> int:
    """Tokens per layer (per group), at least 1, removing ``share`` of each group's initial mergeable tokens;
    default: the paper's operating point (the divided share when the tokens merge in several groups, frames)."""
    if share is None:
        share = OPERATING_SHARE["divided" if layout.groups > 1 else "joint"]
    return max(1, resolve_r(share, layout))


def build_plan(
    settings: MergeSettings,
    num_layers: int,
    layout: TokenLayout,
    *,
    prop_attn_default: bool = True,
    trace_source: bool = False,
    record_stats: bool = False,
    input_frames: tuple[int, ...] | None = None,
    cost: ModelCost | None = None,
) -> MergePlan:
    """The plan of ``settings`` for a model of ``num_layers`` layers whose tokens divide as ``layout``; ``cost``
    lets it predict its FLOPs."""
    return MergePlan(
        r=schedule_r(resolve_r(settings.r, layout), num_layers, settings.schedule),
        layout=layout,
        settings=settings,
        prop_attn=prop_attn_default if settings.prop_attn is None else settings.prop_attn,
        trace_source=trace_source,
        record_stats=record_stats,
        input_frames=input_frames,
        cost=cost,
    )


def with_r(plan: MergePlan, r: int) -> MergePlan:
    """The same plan with another r (the scale of its named schedule)."""
    return replace(plan, r=schedule_r(r, len(plan.r), plan.settings.schedule), settings=replace(plan.settings, r=r))


def _largest_r(plan: MergePlan) -> int:
    """An r beyond which every layer of every named schedule clamps alike (nothing more to remove)."""
    return plan.layout.tokens_per_group * max(1, len(plan.r) - 1)


def smallest_flop_ratio(plan: MergePlan) -> float:
    """The smallest predicted FLOP ratio any r reaches with the plan's model and schedule (every layer clamped)."""
    return with_r(plan, _largest_r(plan)).flop_ratio


def r_for_flops(target: float, plan: MergePlan) -> int:
    """The smallest r (the scale of a named schedule) whose predicted FLOPs are at most ``target`` of the unmerged
    model's, with the plan's model and other settings: the least merging that meets the budget. A target in
    (0, 1] the model cannot reach is refused, naming the smallest reachable ratio."""
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise ValueError(f"flops={target!r} must be a FLOP ratio in (0, 1] (0.4: at most 40% of the unmerged model)")
    if not isinstance(plan.settings.schedule, str):
        raise ValueError("flops= chooses r for a named schedule; a schedule list already fixes every layer's r")
    smallest = smallest_flop_ratio(plan)
    if smallest > target:
        raise ValueError(
            f"flops={target} is out of reach with schedule={plan.settings.schedule!r}: the smallest FLOP ratio this "
            f"model reaches is {smallest:.4f}"
        )
    low, high = 0, _largest_r(plan)
    while low < high:  # the ratio falls as r grows
        middle = (low + high) // 2
        low, high = (low, middle) if with_r(plan, middle).flop_ratio <= target else (middle + 1, high)
    return low


#: the keys of a plan file (:meth:`MergePlan.to_dict`); ``tuned`` holds what ``videotome tune`` measured
PLAN_KEYS = ("layers", "layout", "settings", "tuned")

PlanSource = MergePlan | Mapping[str, object] | str | os.PathLike


def read_plan(source: PlanSource) -> tuple[MergeSettings, int, TokenLayout]:
    """The settings of a plan (a :class:`MergePlan`, a plan file's dict, or the path of its JSON), and the layers
    and token layout of the model it was made for."""
    if isinstance(source, MergePlan):
        source = source.to_dict()
    elif not isinstance(source, Mapping):
        try:
            source = json.loads(open(source).read())
        except json.JSONDecodeError as error:
            raise ValueError(f"plan file {os.fspath(source)!r} is not JSON ({error})") from None
    if not isinstance(source, Mapping) or not {"layers", "layout", "settings"} <= set(source):
        raise ValueError(f"a plan has the keys {list(PLAN_KEYS[:3])} (videotome tune --json)")
    unknown = sorted(set(source) - set(PLAN_KEYS))
    if unknown:
        raise ValueError(f"unknown plan keys {unknown}; expected {list(PLAN_KEYS)}")
    return MergeSettings.from_dict(source["settings"]), source["layers"], TokenLayout(**source["layout"])


def plan_settings(source: PlanSource, num_layers: int, layout: TokenLayout) -> MergeSettings:
    """The settings of a plan (:func:`read_plan`) for a model of ``num_layers`` layers whose tokens divide as
    ``layout``; a plan made for another model shape is refused."""
    settings, *made_for = read_plan(source)
    if tuple(made_for) != (num_layers, layout):
        raise ValueError(
            f"the plan was made for {made_for[0]} layers of tokens {made_for[1]}, not this model's {num_layers} "
            f"layers of {layout}"
        )
    return settings
