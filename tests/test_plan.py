"""Schedules, fractions and the validation of every option."""

import pytest

from videotome.plan import MergeSettings, TokenLayout, build_plan, schedule_r

VIDEOMAE_BASE = TokenLayout(groups=1, tokens_per_group=1568)


def test_constant_schedule():
    assert schedule_r(150, 12, "constant") == (150,) * 12


def test_increasing_and_decreasing_follow_the_linear_ramp():
    increasing = schedule_r(150, 12, "increasing")
    decreasing = schedule_r(150, 12, "decreasing")
    assert increasing == tuple(int(i * 300 / 11) for i in range(12))
    assert increasing[0] == 0 and increasing[-1] == 300
    assert decreasing[0] == 300 and decreasing[-1] == 0
    assert abs(sum(increasing) - 150 * 12) <= 12 and abs(sum(decreasing) - 150 * 12) <= 12


def test_explicit_schedule():
    assert schedule_r(0, 3, [1, 2, 3]) == (1, 2, 3)


def test_fraction_of_initial_tokens():
    assert build_plan(MergeSettings(0.096), 12, VIDEOMAE_BASE).r == (150,) * 12
    vivit = TokenLayout(groups=1, tokens_per_group=3137, protected=1)
    assert build_plan(MergeSettings(0.0957), 12, vivit).r[0] == 300


def test_steps_clamp_and_count_tokens():
    steps = build_plan(MergeSettings(18), 12, TokenLayout(groups=8, tokens_per_group=196, shared=1)).steps()
    assert steps[0].tokens_in == 1 + 8 * 196 and steps[0].tokens_out == 1 + 8 * 178
    assert [s.effective_r for s in steps] == [18] * 9 + [17, 8, 4]
    assert steps[-1].tokens_out == 1 + 8 * 5
    assert all(a.tokens_out == b.tokens_in for a, b in zip(steps, steps[1:]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(r=-1), "r=-1 must be >= 0"),
        (dict(r=1.0), r"r=1.0.*\(0, 1\)"),
        (dict(r=1.5), r"r=1.5.*\(0, 1\)"),
        (dict(r="10"), "r='10'"),
        (dict(r=4, strategy="average"), "strategy='average' is not one of"),
        (dict(r=4, schedule="cosine"), "schedule='cosine' is not one of"),
        (dict(r=4, schedule=[1, 2]), "schedule has 2 values; expected one per layer \\(12\\)"),
        (dict(r=4, schedule=[1] * 11 + [-1]), "schedule value -1"),
        (dict(r=4, strategy="hybrid", threshold=1.5), r"threshold=1.5 must be a cosine similarity in \[-1, 1\]"),
        (dict(r=4, strategy="hybrid"), "needs threshold="),
        (dict(r=4, threshold=0.5), "applies only to strategy='hybrid'"),
        (dict(r=4, divided="diagonal"), "divided='diagonal' is not one of"),
        (dict(r=4, seed=1.5), "seed=1.5"),
    ],
)
def test_bad_options_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_plan(MergeSettings(**kwargs), 12, VIDEOMAE_BASE)


def test_plan_prints_a_table():
    text = str(build_plan(MergeSettings(150), 12, VIDEOMAE_BASE))
    assert "requested_r" in text and "1568" in text and len(text.splitlines()) == 14
