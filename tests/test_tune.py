"""``videotome tune``: end to end on a testbed checkpoint, its choice when speed follows FLOPs, its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch.utils.flop_counter import FlopCounterMode

import videotome
from videotome import tune
from videotome.bench import bench_model
from videotome.cli import main
from videotome.plan import r_for_flops

CHECKPOINT = str(Path(tune.__file__).parent / "testbed" / "checkpoints" / "videomae")


def _tune(tmp_path: Path, *flags: str) -> list[str]:
    return ["tune", "--model", CHECKPOINT, "--points", "2", "--repeats", "1", "--warmup", "0",
            "--plot", str(tmp_path / "tune.png"), "--threads", "1", *flags]


def test_tune_end_to_end(tmp_path, capsys):
    """Real timing (never asserted): the largest candidate removes 86% of the FLOPs, so 1.01x is reached."""
    assert main(_tune(tmp_path, "--speedup", "1.01", "--batch-size", "4", "--json")) == 0
    written = json.loads(capsys.readouterr().out)
    assert (tmp_path / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = written["tuned"]["curve"]
    assert [point["r"] for point in curve] == sorted({point["r"] for point in curve}) and len(curve) >= 2
    chosen = written["settings"]["r"]
    assert chosen == min(point["r"] for point in curve if point["speedup"] >= 1.01)
    model = videotome.patch(bench_model(CHECKPOINT), plan=written)
    assert videotome.plan(model).settings.r == chosen and videotome.plan(model).to_dict()["layers"] == 12


def _speed_of_flops(calls, **options):
    """A timer under which every call takes as long as its FLOPs: speed follows the FLOP count exactly."""
    seconds = []
    for call in calls:
        with FlopCounterMode(display=False) as counter:
            call()
        seconds.append(float(counter.get_total_flops()))
    return seconds


def _eager(name: str):
    model = bench_model(name)
    model.set_attn_implementation("eager")
    return model


@pytest.mark.parametrize("schedule", ["constant", "increasing"])
def test_when_speed_follows_flops_tune_chooses_what_flops_chooses(tmp_path, monkeypatch, capsys, schedule):
    monkeypatch.setattr(tune, "time_interleaved", _speed_of_flops)
    monkeypatch.setattr(tune, "bench_model", _eager)  # the counter misses the CPU SDPA kernel
    config = tune.TuneConfig(CHECKPOINT, 2.0, videotome.MergeSettings(schedule=schedule), points=4, repeats=1)
    result = tune.run_tune(config, progress=False)
    model = videotome.patch(bench_model(CHECKPOINT), schedule=schedule)
    assert result.plan.settings.r == r_for_flops(0.5, videotome.plan(model))
    for point in result.points:
        assert point.speedup == pytest.approx(1 / point.flop_ratio, rel=1e-6)


def test_an_unreachable_speedup_names_the_best_reached(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tune, "time_interleaved", lambda calls, **options: [1.0] + [0.8] * (len(calls) - 1))
    assert main(_tune(tmp_path, "--speedup", "3")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("videotome tune: error: no r reaches a speedup of 3: the best measured is 1.25x at r=")
    assert (tmp_path / "tune.png").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--speedup", "1"], "speedup=1.0 must be above 1 (the unmerged model's speed is 1)"),
        (["--speedup", "2", "--points", "0"], "points=0 must be at least 1"),
        (["--speedup", "2", "--schedule", "1,2"], "tune scales a named schedule; a schedule list already fixes "
                                                  "every layer's r"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, flags, message):
    assert main(_tune(tmp_path, *flags)) == 2
    assert capsys.readouterr().err.strip() == f"videotome tune: error: {message}"


def test_tune_chooses_r_itself(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--model", CHECKPOINT, "--speedup", "2", "--reduce", "4"])
    assert "unrecognized arguments: --reduce 4" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tune chooses r; give the other merge settings only"):
        tune.TuneConfig(CHECKPOINT, 2.0, videotome.MergeSettings(4))
