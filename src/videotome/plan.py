"""The merge plan: per-layer r, strategy and options, validated and fixed before any forward pass.

A plan is immutable. :func:`videotome.patch` builds one and the patched forward only reads it, so a patched
model is safe under ``torch.compile``, ``torch.inference_mode`` and concurrent use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    """One layer's line of the plan, for the model's configured input size."""

    layer: int
    requested_r: int
    effective_r: int
    tokens_in: int
    tokens_out: int


@dataclass(frozen=True)
class MergePlan:
    """Everything a patched forward needs to know, fixed at patch time.

    ``r`` holds the requested tokens to remove per layer (per group: per frame for divided models);
    each layer clamps it to what its current sequence allows, as :meth:`steps` reports.
    """

    r: tuple[int, ...]
    layout: TokenLayout
    strategy: str = "merge"
    threshold: float | None = None
    prop_attn: bool = True
    divided: str = "per_frame"
    trace_source: bool = False
    seed: int | None = None
    schedule: str = "constant"

    def steps(self) -> list[LayerStep]:
        """Per layer: requested r, clamped r, and the whole sequence's length before and after."""
        steps = []
        per_group = self.layout.tokens_per_group
        for layer, requested in enumerate(self.r):
            effective = clamp_r(requested, per_group, self.layout.protected)
            steps.append(
                LayerStep(
                    layer,
                    requested,
                    effective,
                    self.layout.total(per_group),
                    self.layout.total(per_group - effective),
                )
            )
            per_group -= effective
        return steps

    def __str__(self) -> str:
        header = (
            f"MergePlan(strategy={self.strategy}, schedule={self.schedule}, prop_attn={self.prop_attn}, "
            f"divided={self.divided}, threshold={self.threshold}, groups={self.layout.groups})\n"
            "layer  requested_r  effective_r  tokens_in  tokens_out"
        )
        rows = [
            f"{s.layer:>5}  {s.requested_r:>11}  {s.effective_r:>11}  {s.tokens_in:>9}  {s.tokens_out:>10}"
            for s in self.steps()
        ]
        return "\n".join([header, *rows])


def schedule_r(r: int, num_layers: int, schedule: str | Sequence[int]) -> tuple[int, ...]:
    """Per-layer r for a schedule.

    ``constant``: r everywhere. ``increasing``: int(0 + i * 2r / (L - 1)) for layer i of L; ``decreasing``: the same
    ramp from 2r down to 0; both request about r * L in all, like the constant schedule. A sequence is taken as
    given, one non-negative int per layer.
    """
    if not isinstance(schedule, str):
        values = list(schedule)
        if len(values) != num_layers:
            raise ValueError(f"schedule has {len(values)} values; expected one per layer ({num_layers})")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"schedule value {value!r} is not a non-negative int")
        return tuple(values)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES} or a list of ints")
    if schedule == "constant" or num_layers == 1:
        return (r,) * num_layers
    start, stop = (0, 2 * r) if schedule == "increasing" else (2 * r, 0)
    step = (stop - start) / (num_layers - 1)
    return tuple(int(start + step * i) for i in range(num_layers))


def parse_r(text: str) -> int | float:
    """Read r from the command line: an integer number of tokens per layer, or a fraction in (0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"r must be an integer or a fraction in (0, 1), got {text!r}") from None
    if value < 0 or (not value.is_integer() and value >= 1):
        raise ValueError(f"r must be a non-negative integer or a fraction in (0, 1), got {text!r}")
    return int(value) if value.is_integer() else value


def resolve_r(r: int | float, layout: TokenLayout) -> int:
    """Tokens per layer from an int, or from a fraction in (0, 1) of each group's initial mergeable tokens."""
    if isinstance(r, bool) or not isinstance(r, (int, float)):
        raise ValueError(f"r={r!r} must be an int >= 0 or a float fraction in (0, 1)")
    if r < 0:
        raise ValueError(f"r={r!r} must be >= 0 (tokens merged per layer)")
    if isinstance(r, float):
        if r >= 1:
            raise ValueError(f"r={r!r}: a float r is a fraction of the initial token count and must be in (0, 1)")
        return int(r * (layout.tokens_per_group - layout.protected))
    return r


def build_plan(
    r: int | float,
    num_layers: int,
    layout: TokenLayout,
    *,
    schedule: str | Sequence[int] = "constant",
    strategy: str = "merge",
    threshold: float | None = None,
    prop_attn: bool = True,
    divided: str = "per_frame",
    trace_source: bool = False,
    seed: int | None = None,
) -> MergePlan:
    """Validate the user's options and return the plan; every bad value gets a ValueError naming it."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} is not one of {STRATEGIES}")
    if threshold is not None:
        if strategy != "hybrid":
            raise ValueError(f"threshold={threshold!r} applies only to strategy='hybrid', not {strategy!r}")
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold={threshold!r} must be a cosine similarity in [-1, 1]")
    elif strategy == "hybrid":
        raise ValueError("strategy='hybrid' needs threshold=, a cosine similarity in [-1, 1]")
    if divided not in DIVIDED_MODES:
        raise ValueError(f"divided={divided!r} is not one of {DIVIDED_MODES}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed={seed!r} must be an int or None")
    per_layer = schedule_r(resolve_r(r, layout), num_layers, schedule)
    return MergePlan(
        r=per_layer,
        layout=layout,
        strategy=strategy,
        threshold=None if threshold is None else float(threshold),
        prop_attn=prop_attn,
        divided=divided,
        trace_source=trace_source,
        seed=seed,
        schedule=schedule if isinstance(schedule, str) else "explicit",
    )
