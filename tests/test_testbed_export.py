"""Exported testbed clips, scored by `videotome eval` from the files, give exactly the demo's in-memory scores.

The export is lossless and each packaged checkpoint carries its heads, frame sampling and preprocessing, so the file
path (decode, `sample_indices`, `preprocess`) and the in-memory path (`Clips.pixels`, `select_frames`) must feed the
models bit-identical inputs: equal accuracies and equal per-clip predictions, with no flag given.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videotome.cli import main
from videotome.evaluation.results import read_runs
from videotome.evaluation.video import load_preprocessing
from videotome.testbed.data import PREPROCESSOR_CONFIG
from videotome.plan import MergeSettings
from videotome.testbed.demo import evaluate_model, validation_clips
from videotome.testbed.models import (
    ARCHITECTURES,
    build_model,
    checkpoint_dir,
    frame_indices,
    load_checkpoint,
)

COUNT = 64

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first COUNT validation clips, written by `videotome testbed generate`."""
    out = tmp_path_factory.mktemp("clips")
    assert main(["testbed", "generate", "--count", str(COUNT), "--out", str(out)]) == 0
    return out


def top1(records: dict[str, dict]) -> list[tuple[int, int]]:
    """Each clip's (verb, noun) top-1 prediction, in the order the clips were scored."""
    return [(record["top5"]["verb"][0][0], record["top5"]["noun"][0][0]) for record in records.values()]


def test_generate_writes_a_labels_csv_with_named_columns(exported: Path) -> None:
    lines = (exported / "labels.csv").read_text().splitlines()
    clips = validation_clips(COUNT)
    assert lines[0] == "path verb noun"
    assert lines[1:3] == [f"videos/val-0000{i}.mp4 {int(clips.labels['verb'][i])} {int(clips.labels['noun'][i])}"
                          for i in range(2)]
    assert len(lines) == COUNT + 1 and not (exported / "verb.txt").exists()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eval_of_exported_clips_equals_the_in_memory_scores(arch: str, exported: Path, tmp_path: Path) -> None:
    files = tmp_path / "files.jsonl"
    argv = ["eval", "--model", str(checkpoint_dir(arch)), "--dataset", "csv", "--root", str(exported),
            "--annotations", str(exported / "labels.csv"), "--out", str(files), "--workers", "0",
            "--batch-size", str(COUNT), "--no-progress"]
    assert main(argv) == 0
    [from_files] = read_runs(files)
    memory = tmp_path / "memory.jsonl"
    evaluate_model(arch, validation_clips(COUNT), lambda model, arch: [MergeSettings()], memory,
                   batch_size=COUNT, timing_clips=2, repeats=1, progress=False)
    [in_memory] = read_runs(memory)
    metrics, scored = from_files.summaries[-1]["metrics"], in_memory.summaries[-1]["metrics"]
    heads = ("verb_top1", "noun_top1", "action_top1")
    assert [metrics[name] for name in heads] == [scored[name] for name in heads]
    assert top1(from_files.records) == top1(in_memory.records)
    assert metrics["noun_top1"] > 0.9  # not chance: heads, sampling and pixels all right
    settings = from_files.header["settings"]
    assert settings["heads"] == "verb:8,noun:10"
    assert settings["sampling"]["frames"] == len(frame_indices(load_checkpoint(arch), 16))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_checkpoint_carries_what_eval_needs(arch: str) -> None:
    directory = checkpoint_dir(arch)
    stored = json.loads((directory / "config.json").read_text())["videotome"]
    assert stored == build_model(arch).config.videotome  # what training writes today
    assert json.loads((directory / "preprocessor_config.json").read_text()) == PREPROCESSOR_CONFIG
    pipeline = load_preprocessing(directory, arch, 32)
    assert (pipeline.resize_to, pipeline.shortest_edge, pipeline.crop, pipeline.mean) == (None, None, None, None)
    assert (pipeline.rescale_factor, pipeline.offset) == (1 / 127.5, True)


def test_frames_follow_the_harness_sampling() -> None:
    assert frame_indices(build_model("timesformer"), 16) == [1, 3, 5, 7, 9, 11, 13, 15]  # uniform, as eval takes
    for arch in ("videomae", "vivit", "motionformer"):
        assert frame_indices(build_model(arch), 16) == list(range(16))
