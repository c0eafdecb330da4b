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
