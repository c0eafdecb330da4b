"""Feature extraction with codec motion vectors, and the command line."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from videotome.vtm.commands import add_commands
from videotome.vtm.features import FAILED_LIST, block_motion_to_patches

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CLIP = SHARED / "clips" / "bigbuckbunny.mp4"
BACKBONE = SHARED / "dinov2-small"


pytestmark = pytest.mark.usefixtures("one_thread")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def motion_vectors(rows: list[tuple[int, int, int, int, int, int, int]]) -> np.ndarray:
    dtype = np.dtype([("w", "u1"), ("h", "u1"), ("dst_x", "<i2"), ("dst_y", "<i2"), ("motion_x", "<i4"),
                      ("motion_y", "<i4"), ("motion_scale", "<u2")])
    return np.array(rows, dtype=dtype)


def test_motion_is_averaged_over_each_patch_area() -> None:
    vectors = motion_vectors([(16, 16, 8, 8, 12, 16, 4), (8, 8, 40, 40, 0, 8, 1)])
    patches = block_motion_to_patches(vectors, (64, 64), (2, 2))
    assert patches[0, 0] == pytest.approx(5.0 * 256 / 1024)
    assert patches[1, 1] == pytest.approx(8.0 * 64 / 1024)
    assert patches[0, 1] == patches[1, 0] == 0
    assert block_motion_to_patches(None, (64, 64), (2, 2)).sum() == 0


@pytest.mark.skipif(not (CLIP.exists() and BACKBONE.exists()), reason="needs ../shared/data (clip and dinov2-small)")
def test_extract_command_is_resumable_and_records_bad_videos(tmp_path: Path, capsys) -> None:
    videos, out = tmp_path / "videos", tmp_path / "features"
    videos.mkdir()
    shutil.copy(CLIP, videos / "bunny.mp4")
    (videos / "broken.mp4").write_bytes(b"not a video")
    argv = ("features", "extract", "--backbone", str(BACKBONE), "--videos", str(videos), "--out", str(out),
            "--fps", "4", "--image-size", "56", "--max-frames", "3")
    assert run_cli(*argv) == 1
    data = load_file(str(out / "bunny.safetensors"))
    assert data["tokens"].shape == (3, 1 + 4 * 4, 384)
    assert data["motion"].shape == (3, 17)
    assert data["motion"][0].sum() == 0
    assert data["motion"][1:].sum() > 0
    assert torch.allclose(data["motion"][:, 0], data["motion"][:, 1:].mean(dim=1))
    assert "broken.mp4" in (out / FAILED_LIST).read_text()
    capsys.readouterr()
    (videos / "broken.mp4").unlink()
    assert run_cli(*argv) == 0
    assert "0 written, 1 already done, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("gammas", [("6",), ("2", "6")])
def test_bench_command_reports_a_json_list(capsys, gammas: tuple[str, ...]) -> None:
    assert run_cli("vtm", "bench", "--shape", "12", "65", "64", "--windows", "2", "6", "12", "--repeats", "1",
                   "--warmup", "0", "--attention", "math", "--gamma", *gammas, "--json") == 0
    results = json.loads(capsys.readouterr().out)
    assert isinstance(results, list) and [row["gamma"] for row in results] == [float(g) for g in gammas]
    for result in results:
        assert set(result) >= {"baseline_samples_per_s", "vtm_samples_per_s", "speedup", "baseline_peak_mb",
                               "vtm_peak_mb", "memory_reduction"}
        assert result["vtm_peak_mb"] < result["baseline_peak_mb"]


def test_train_and_eval_commands(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert run_cli("vtm", "train", "--epochs", "1", "--warmup-epochs", "1", "--max-steps-per-epoch", "2",
                   "--synthetic-videos", "16", "--synthetic-eval-videos", "16", "--batch-size", "8",
                   "--out", str(out)) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert trained["epoch"] == 1
    assert run_cli("vtm", "eval", "--checkpoint", str(out / "last.pt"), "--split", "val") == 0
    assert json.loads(capsys.readouterr().out) == {"val_accuracy": trained["val_accuracy"]}
