"""The analytic FLOP count against torch's FLOP counter, FLOP targets (patch(flops=)) and plan files (patch(plan=))."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FAMILIES, benchmark_script, tiny_input, tiny_model

import videotome
from videotome.bench import _BUILTINS, count_flops, example_input, random_model
from videotome.plan import MergeSettings

#: merged settings the count must follow: every schedule, a random strategy (no matching), the aligned mode
SETTINGS = [
    dict(r=3),
    dict(r=5, schedule="increasing"),
    dict(r=2, schedule="decreasing"),
    dict(r=3, strategy="random_drop"),
    dict(r=3, strategy="hybrid", threshold=0.5),
    dict(r=3, divided="aligned"),
    dict(r=40),  # clamped in every layer
]


def _counted(model: torch.nn.Module, family: str) -> float:
    """torch's count of one forward, per input sample."""
    pixel_values = tiny_input(family, batch=2)
    return count_flops(model, pixel_values) / len(pixel_values)


@pytest.mark.parametrize("options", SETTINGS, ids=lambda options: ",".join(f"{k}={v}" for k, v in options.items()))
def test_the_analytic_count_is_torchs_count(family, options):
    model = tiny_model(family)
    unmerged = _counted(model, family)
    videotome.patch(model, **options)
    merged, predicted_unmerged = videotome.plan(model).flops()
    assert predicted_unmerged == unmerged  # no merge step: the same products, counted alike
    assert merged == pytest.approx(_counted(model, family), rel=0.02)
    assert merged < unmerged


#: the paper's operating points (benchmarks/paper_points.py; DINOv2: the joint operating share, 24 of 256)
PAPER_POINTS = {"videomae-base": 150, "vivit-base": 300, "timesformer-base": 18, "motionformer-base": 18,
                "dinov2-small": 24}


@pytest.mark.parametrize("name", list(PAPER_POINTS))
def test_the_analytic_count_at_the_papers_points(name):
    """Base models at their configured input, built and run on the meta device (no arithmetic, under a second)."""
    family, settings = _BUILTINS[name]
    with torch.device("meta"):
        model = random_model(family, **settings)
        pixel_values, _ = example_input(model, 1)
    unmerged = count_flops(model, pixel_values) / len(pixel_values)
    videotome.patch(model, r=PAPER_POINTS[name])
    merged, predicted_unmerged = videotome.plan(model).flops()
    assert predicted_unmerged == pytest.approx(unmerged, rel=0.02)
    assert merged == pytest.approx(count_flops(model, pixel_values) / len(pixel_values), rel=0.02)


@pytest.mark.parametrize("schedule", ["constant", "increasing", "decreasing"])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_flop_target_is_met_by_the_least_merging(family, schedule):
    """The counted ratio is within 2% of the target or below it, and one r step less would exceed the target."""
    model = tiny_model(family, layers=4)
    unmerged = _counted(model, family)
    target = 0.75
    videotome.patch(model, flops=target, schedule=schedule)
    chosen = videotome.plan(model)
    counted = _counted(model, family) / unmerged
    assert chosen.settings.r > 0 and chosen.settings.schedule == schedule
    assert counted <= target * 1.02 and chosen.flop_ratio <= target
    assert counted == pytest.approx(chosen.flop_ratio, rel=0.02)
    videotome.patch(model, r=chosen.settings.r - 1, schedule=schedule)
    assert _counted(model, family) / unmerged > target


def test_plan_prints_the_predicted_ratio():
    model = videotome.patch(tiny_model("videomae"), r=3)
    text = str(videotome.plan(model))
    ratio = videotome.plan(model).flop_ratio
    assert f"predicted FLOPs: {ratio:.3f} of the unmerged model" in text
    rows = [line.split() for line in text.splitlines()[3:]]
    steps = videotome.plan(model).steps()
    assert [float(row[-1]) for row in rows] == [round(step.flops, 3) for step in steps]
    assert steps[0].flops < 1  # the first block's MLP already runs on fewer tokens


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(flops=0.5, r=3), r"flops=0.5 and r=3 together"),
        (dict(flops=0.01), r"flops=0.01 is out of reach with schedule='constant': the smallest FLOP ratio this "
                           r"model reaches is 0\.\d{4}"),
        (dict(flops=0.0), r"flops=0.0 must be a FLOP ratio in \(0, 1\]"),
        (dict(flops=1.5), r"flops=1.5 must be a FLOP ratio"),
        (dict(flops=0.5, schedule=[1, 1, 1]), "a schedule list already fixes every layer's r"),
        (dict(plan={"layers": 3}, r=2), "plan= holds every merge setting"),
    ],
)
def test_bad_targets_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message):
        videotome.patch(tiny_model("videomae"), **options)


def test_a_target_of_one_merges_nothing():
    model = videotome.patch(tiny_model("vivit"), flops=1.0)
    assert videotome.plan(model).settings.r == 0 and videotome.plan(model).flop_ratio == 1


def test_a_plan_file_round_trips(tmp_path):
    model = videotome.patch(tiny_model("timesformer"), r=4, schedule="decreasing", strategy="drop")
    original = videotome.plan(model)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(original.to_dict()))
    for source in (path, str(path), json.loads(path.read_text()), original):
        again = videotome.plan(videotome.patch(tiny_model("timesformer"), plan=source))
        assert again == original
    assert original.settings == MergeSettings(4, schedule="decreasing", strategy="drop")


def test_a_plan_for_another_model_shape_is_refused(tmp_path):
    plan = videotome.plan(videotome.patch(tiny_model("videomae"), r=3)).to_dict()
    with pytest.raises(ValueError, match=r"the plan was made for 3 layers of tokens .*tokens_per_group=32.*not this "
                                         r"model's 4 layers"):
        videotome.patch(tiny_model("videomae", layers=4), plan=plan)
    with pytest.raises(ValueError, match="unknown plan keys \\['extra'\\]"):
        videotome.patch(tiny_model("videomae"), plan={**plan, "extra": 1})
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not JSON"):
        videotome.patch(tiny_model("videomae"), plan=tmp_path / "bad.json")


def test_the_flop_target_benchmark_row_says_hit_when_the_count_is_at_the_target(monkeypatch):
    """benchmarks/flop_targets.py on VideoMAE-B (meta device): its row's figures are the plan's and torch's."""
    flop_targets = benchmark_script("flop_targets", monkeypatch)
    name, schedule, target, r, predicted, counted, less, hit = flop_targets.row("videomae-base", "constant", 0.5)
    assert (name, schedule, target, hit) == ("videomae-base", "constant", "0.50", "yes")
    assert int(r) > 0 and float(counted) == pytest.approx(float(predicted), rel=0.02)
    assert float(counted) <= 0.5 * 1.02 < float(less) * 1.02 and float(less) > 0.5
