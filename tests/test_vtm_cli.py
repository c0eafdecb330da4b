"""The vtm and features commands through ``videotome.cli.main``: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_video

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
    checkpoint, log = (out / "last.pt").read_bytes(), (out / "log.jsonl").read_text()
    line = refused(capsys, *TRAIN, "--out", str(out), "--epochs", "1")
    assert str(out) in line and "finished" in line and "--overwrite" in line
    assert (out / "last.pt").read_bytes() == checkpoint and (out / "log.jsonl").read_text() == log
    assert train(capsys, out, "--epochs", "1", "--overwrite") == [1]


def test_a_log_that_cannot_be_trimmed_is_refused(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert train(capsys, out, "--epochs", "1") == [1]
    (out / "log.jsonl").write_text("not json\n")
    line = refused(capsys, *TRAIN, "--out", str(out), "--epochs", "2")
    assert "log.jsonl" in line and "'not json'" in line


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


def tiny_backbone(directory: Path) -> Path:
    """A 32-wide DINOv2 with 8-pixel patches saved as a local model directory."""
    from conftest import tiny_model

    tiny_model("dinov2").save_pretrained(directory)
    return directory


@pytest.fixture
def no_network(monkeypatch) -> list:
    """Fail any socket connection; the list holds the addresses tried."""
    import socket

    tried = []

    def connect(self, address):
        tried.append(address)
        raise OSError(f"network used: {address}")

    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried


def extract(tmp_path: Path, backbone: str | Path, *options: str) -> list[str]:
    return ["features", "extract", "--backbone", str(backbone), "--videos", str(tmp_path / "videos"), "--out",
            str(tmp_path / "features"), "--fps", "4", "--image-size", "32", *options]


def test_extract_checks_fps_and_the_video_folder_first(tmp_path: Path, capsys) -> None:
    (tmp_path / "videos").mkdir()
    line = refused(capsys, *extract(tmp_path, tmp_path / "no-backbone", "--fps", "0"))
    assert "--fps 0.0" in line
    (tmp_path / "videos").rmdir()
    line = refused(capsys, *extract(tmp_path, tmp_path / "no-backbone"))
    assert f"--videos {tmp_path / 'videos'}" in line
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("name", ["missing-dir", "nobody/no-such-backbone"])
def test_extract_never_downloads_a_backbone(tmp_path: Path, capsys, no_network: list, name: str) -> None:
    (tmp_path / "videos").mkdir()
    backbone = str(tmp_path / name) if name == "missing-dir" else name
    line = refused(capsys, *extract(tmp_path, backbone))
    assert repr(backbone) in line and "local Hugging Face cache" in line
    assert no_network == [] and not (tmp_path / "features").exists()


def test_extract_names_a_backbone_directory_that_does_not_load(tmp_path: Path, capsys, no_network: list) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "empty").mkdir()
    line = refused(capsys, *extract(tmp_path, tmp_path / "empty"))
    assert repr(str(tmp_path / "empty")) in line and "does not load" in line
    assert no_network == []


def test_extract_loads_a_hub_id_from_the_local_cache(tmp_path: Path, capsys, monkeypatch, no_network: list) -> None:
    import huggingface_hub

    repo = tmp_path / "hub" / "models--tiny--dinov2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    tiny_backbone(repo / "snapshots" / "0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    write_video(tmp_path / "videos" / "clip.mp4")
    assert main(extract(tmp_path, "tiny/dinov2")) == 0, capsys.readouterr().err
    assert (tmp_path / "features" / "clip.safetensors").exists()
    assert no_network == []


def test_a_rerun_keeps_one_failed_line_per_video(tmp_path: Path, capsys) -> None:
    backbone = tiny_backbone(tmp_path / "backbone")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video")
    (videos / "fixed.mp4").write_bytes(b"not a video yet")
    failed = tmp_path / "features" / "failed.tsv"
    for _ in range(2):
        assert main(extract(tmp_path, backbone)) == 1
        assert sorted(line.split("\t")[0] for line in failed.read_text().splitlines()) == ["broken.mp4", "fixed.mp4"]
    write_video(videos / "fixed.mp4")
    assert main(extract(tmp_path, backbone)) == 1
    assert [line.split("\t")[0] for line in failed.read_text().splitlines()] == ["broken.mp4"]
    (videos / "broken.mp4").unlink()
    assert main(extract(tmp_path, backbone)) == 0
    assert failed.read_text().splitlines()[0].startswith("broken.mp4\t")
    assert "0 written, 1 already done, 0 failed" in capsys.readouterr().out.splitlines()[-1]


def test_training_under_torchrun_with_every_flag(tmp_path: Path) -> None:
    """``vtm train`` on LVU features with every one of its flags, data-parallel over two processes."""
    from conftest import missing_flags
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    (tmp_path / "features").mkdir()
    for index in range(8):
        save_file({"tokens": torch.randn(6 + index, 5, 16, generator=generator),
                   "motion": torch.rand(6 + index, 5, generator=generator)},
                  str(tmp_path / "features" / f"v{index}.safetensors"))
    (tmp_path / "lvu" / "genre").mkdir(parents=True)
    for split in ("train", "val"):
        rows = "".join(f"{index % 4} v{index} tt{index}\n" for index in range(8))
        (tmp_path / "lvu" / "genre" / f"{split}.csv").write_text("genre youtube_id imdb_id\n" + rows)
    out = tmp_path / "run"
    argv = ["vtm", "train", "--dataset", "lvu", "--out", str(out), "--root", str(tmp_path / "lvu"),
            "--features", str(tmp_path / "features"), "--task", "genre", "--frames", "4", "--epochs", "2",
            "--warmup-epochs", "1", "--batch-size", "2", "--lr", "0.001", "--weight-decay", "0.01",
            "--aux-loss-weight", "0.5", "--seed", "0", "--workers", "1", "--eval-stride", "2", "--eval-split", "val",
            "--max-steps-per-epoch", "2", "--synthetic-videos", "8", "--synthetic-eval-videos", "8",
            "--channels", "8", "8", "--windows", "2", "4", "--heads", "2", "--dropout", "0.0", "--no-merge",
            "--partition", "motion", "--gamma", "2", "--merge-ratio", "0.5", "--weighted-merge",
            "--sample-with-replacement", "--motion-temperature", "0.5", "--aux-weights", "separate",
            "--saliency-bias-scale", "1.0", "--attention", "math", "--overwrite", "--threads", "1"]
    assert missing_flags("vtm train", argv) == []
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
    result = subprocess.run([*torchrun, "-m", "videotome", *argv], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2]  # one process writes the log
    printed = result.stdout.strip().splitlines()
    assert len(printed) == 1 and json.loads(printed[0])["epoch"] == 2, result.stdout  # and prints
    stored = torch.load(out / "last.pt", weights_only=True)
    config = stored["config"]
    assert stored["epoch"] == 2 and config["task"] == "genre" and config["aux_loss_weight"] == 0.5
    assert config["model"]["partition"] == "motion" and config["model"]["attention"] == "math"


def test_bench_text_gives_the_memory_change_with_its_sign(capsys) -> None:
    assert main(["vtm", "bench", "--shape", "12", "16", "64", "--windows", "2", "6", "12", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--gamma", "2"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    change = re.search(r"peak memory ([+-]\d+)%$", line)
    assert change and "--" not in line, line
    baseline, vtm = (int(value) for value in re.findall(r"(\d+) MiB", line))
    assert abs(vtm - baseline) < 2 or (int(change.group(1)) < 0) == (vtm < baseline), line  # "-" is less memory


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_bench_train_times_a_training_step_of_both_paths(capsys, monkeypatch, attention: str) -> None:
    """``--train``: every timed call of the learnable VTM computes the main and the auxiliary loss and their
    gradients; the baseline has no auxiliary path."""
    import videotome.vtm.bench as bench

    seen, backward = [], []

    def recording_loss(output, target, regression, aux_weight=1.0):
        seen.append(output.aux_logits is not None)
        loss = real_loss(output, target, regression, aux_weight)
        loss.register_hook(lambda grad: backward.append(True))
        return loss

    real_loss = bench.vtm_loss
    monkeypatch.setattr(bench, "vtm_loss", recording_loss)
    assert main(["vtm", "bench", "--shape", "12", "16", "64", "--windows", "2", "6", "12", "--repeats", "2",
                 "--warmup", "0", "--device", "cpu", "--gamma", "2", "--train", "--attention", attention,
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["mode"] == "train" and row["attention"] == attention
    assert row["baseline_samples_per_s"] > 0 and row["vtm_samples_per_s"] > 0 and row["vtm_peak_mb"] > 0
    # two timed rounds and one memory run of the baseline (no auxiliary path) and of VTM (with it)
    assert sorted(seen) == [False] * 3 + [True] * 3 and len(backward) == 6


def test_bench_inference_computes_no_loss(capsys, monkeypatch) -> None:
    import videotome.vtm.bench as bench

    monkeypatch.setattr(bench, "vtm_loss", None)  # inference never reaches the loss
    assert main(["vtm", "bench", "--shape", "12", "16", "64", "--windows", "2", "6", "12", "--repeats", "1",
                 "--warmup", "0", "--device", "cpu", "--gamma", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["mode"] == "inference"
