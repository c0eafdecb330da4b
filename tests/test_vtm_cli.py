"""The vtm and features commands through ``videotome.cli.main``: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from videotome.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def refused(capsys, *argv: str) -> str:
    """Run a command that must fail with one error line (no traceback); returns that line."""
    capsys.readouterr()
    assert main(list(argv)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videotome "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


class TouchOnLoad:
    """Unpickling this creates ``marker``: what a pickle that runs code on load would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    """A file with every checkpoint key whose ``config`` runs code when loaded as a full pickle."""
    state = {key: 0 for key in ("model", "optimizer", "scheduler", "epoch", "rng")}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "config": TouchOnLoad(marker)}, path)
    return path


def test_eval_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    checkpoint = crafted_checkpoint(tmp_path / "crafted.pt", marker)
    line = refused(capsys, "vtm", "eval", "--checkpoint", str(checkpoint))
    assert str(checkpoint) in line and "refused" in line
    assert not marker.exists()
    torch.load(checkpoint, weights_only=False)
    assert marker.exists(), "the crafted file is harmless, so the test proves nothing"


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "missing.pt"
    assert str(missing) in refused(capsys, "vtm", "eval", "--checkpoint", str(missing))


TRAIN = ("vtm", "train", "--threads", "1", "--warmup-epochs", "1", "--max-steps-per-epoch", "1",
         "--synthetic-videos", "8", "--synthetic-eval-videos", "8", "--batch-size", "4", "--channels", "8", "8", "8",
         "--heads", "2")


def train(capsys, out: Path, *options: str) -> list[int]:
    """Run ``vtm train`` into ``out`` (must succeed); the epochs of its log."""
    assert main([*TRAIN, "--out", str(out), *options]) == 0, capsys.readouterr().err
    return [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_finished_run_is_refused_unless_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train(capsys, out, "--epochs", "1") == [1]
    checkpoint = (out / "last.pt").read_bytes()
    line = refused(capsys, *TRAIN, "--out", str(out), "--epochs", "1")
    assert str(out) in line and "finished" in line and "--overwrite" in line
    assert (out / "last.pt").read_bytes() == checkpoint
    assert train(capsys, out, "--epochs", "1", "--overwrite") == [1]


def test_more_epochs_continue_a_finished_run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train(capsys, out, "--epochs", "1") == [1]
    assert train(capsys, out, "--epochs", "2") == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize(("option", "name"), [(("--lr", "0.01"), "lr"), (("--gamma", "4"), "model.gamma"),
                                              (("--frames", "6", "--windows", "2", "6", "6"), "frames")])
def test_a_run_with_another_configuration_is_refused(tmp_path: Path, capsys, option: tuple[str, ...],
                                                     name: str) -> None:
    out = tmp_path / "run"
    assert train(capsys, out, "--epochs", "1") == [1]
    line = refused(capsys, *TRAIN, "--out", str(out), "--epochs", "2", *option)
    assert f"{name}:" in line and "another configuration" in line
    assert train(capsys, out, "--epochs", "2") == [1, 2]


def test_training_refuses_to_resume_from_a_checkpoint_that_would_run_code(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "marker"
    crafted_checkpoint(tmp_path / "run" / "last.pt", marker)
    line = refused(capsys, *TRAIN, "--out", str(tmp_path / "run"), "--epochs", "1")
    assert "last.pt" in line and "refused" in line
    assert not marker.exists()


def test_lvu_training_names_what_is_missing(tmp_path: Path, capsys) -> None:
    line = refused(capsys, "vtm", "train", "--dataset", "lvu", "--out", str(tmp_path / "run"))
    assert "--task" in line and "scene" in line
    line = refused(capsys, "vtm", "train", "--dataset", "lvu", "--task", "scene", "--out", str(tmp_path / "run"))
    assert "--root" in line and "--features" in line
    assert not (tmp_path / "run").exists()


def test_training_checks_the_windows_against_the_frames(tmp_path: Path, capsys) -> None:
    line = refused(capsys, *TRAIN, "--out", str(tmp_path / "run"), "--frames", "10")
    assert "10 frames" in line and "(2, 6, 12)" in line


@pytest.mark.parametrize(("windows", "named"), [(("5", "7"), "windows=(5, 7)"), (("4", "8"), "12 frames")])
def test_bench_checks_the_windows_before_building(capsys, monkeypatch, windows: tuple[str, ...], named: str) -> None:
    import videotome.vtm.bench as bench

    monkeypatch.setattr(bench, "VideoTokenMerger", None)  # nothing may be built
    line = refused(capsys, "vtm", "bench", "--shape", "12", "65", "64", "--windows", *windows, "--device", "cpu")
    assert named in line


def test_bench_checks_the_token_grid(capsys) -> None:
    line = refused(capsys, "vtm", "bench", "--shape", "12", "60", "64", "--windows", "2", "6", "12")
    assert "60 tokens per frame" in line
