"""Unit tests of the evaluation pieces that need no video: sampling, preprocessing, annotations, results, report."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from videotome.evaluation import commands
from videotome.evaluation.report import collect_rows, table
from videotome.evaluation.datasets import AnnotationError, check_labels, load_samples, parse_timestamp
from videotome.evaluation.harness import parse_heads
from videotome.plan import MergeSettings, read_r
from videotome.evaluation.results import ResultsError, ResultsWriter, compute_metrics, read_runs, run_id
from videotome.evaluation.video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SamplingConfig,
    load_preprocessing,
    model_sampling,
    normalize,
    preprocess,
    preprocessing_from_dict,
    sample_indices,
)
from videotome.heads import format_heads, logits_per_head, model_heads


def test_dense_sampling_takes_the_centre_and_repeats_the_last_frame() -> None:
    assert sample_indices(100, SamplingConfig(4, "dense", 4)) == [43, 47, 51, 55]
    assert sample_indices(13, SamplingConfig(4, "dense", 4)) == [0, 4, 8, 12]
    assert sample_indices(10, SamplingConfig(4, "dense", 4)) == [0, 4, 8, 8]
    assert sample_indices(1, SamplingConfig(3, "dense", 2)) == [0, 0, 0]


def test_uniform_sampling_takes_the_middle_of_each_segment() -> None:
    assert sample_indices(80, SamplingConfig(8, "uniform")) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert sample_indices(3, SamplingConfig(5, "uniform")) == [0, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="sampling must be one of"):
        SamplingConfig(8, "random")


def test_preprocessing_follows_the_checkpoint_config(tmp_path: Path) -> None:
    vivit = {"size": {"shortest_edge": 20}, "crop_size": {"height": 16, "width": 16}, "rescale_factor": 1 / 127.5,
             "offset": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    pipeline = preprocessing_from_dict(vivit, "vivit", 224)
    frames = np.full((2, 30, 40, 3), 255, dtype=np.uint8)
    video = preprocess(frames, pipeline)
    assert video.shape == (2, 3, 16, 16)
    assert torch.allclose(video, torch.ones_like(video))  # 255 / 127.5 - 1 = 1, then (1 - 0.5) / 0.5 = 1
    processor = {"size": {"height": 8, "width": 12}, "do_center_crop": False}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    assert preprocess(frames, load_preprocessing(tmp_path, "videomae", 224)).shape == (2, 3, 8, 12)


def test_preprocessing_defaults_without_a_config(tmp_path: Path) -> None:
    pipeline = load_preprocessing(tmp_path, "videomae", 16)
    assert (pipeline.shortest_edge, pipeline.crop) == (16, (16, 16))
    assert pipeline.mean == IMAGENET_MEAN and pipeline.std == IMAGENET_STD
    assert load_preprocessing(tmp_path, "vivit", 16).mean == (0.5, 0.5, 0.5)
    portrait = np.full((1, 60, 30, 3), 128, dtype=np.uint8)
    video = preprocess(portrait, pipeline)
    assert video.shape == (1, 3, 16, 16)
    expected = (128 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(video[0, :, 8, 8], expected, atol=1e-5)


def test_in_memory_normalisation_is_the_file_path_arithmetic_bit_for_bit() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    for processor in ({"do_resize": False, "do_center_crop": False, "rescale_factor": 1 / 127.5, "offset": True,
                       "do_normalize": False},
                      {"do_resize": False, "do_center_crop": False}):
        pipeline = preprocessing_from_dict(processor, "videomae", 8)
        in_memory = normalize(torch.from_numpy(frames).permute(0, 3, 1, 2).float().unsqueeze(0), pipeline)[0]
        assert torch.equal(in_memory, preprocess(frames, pipeline))
    with pytest.raises(ValueError, match="normalises needs image_mean and image_std"):
        preprocessing_from_dict({"do_resize": False}, None, 8)


def test_checkpoint_settings_are_the_defaults_and_flags_override_them() -> None:
    from types import SimpleNamespace

    stored = {"heads": "verb:8,noun:10", "sampling": {"frames": 8, "sampling": "uniform", "stride": 1}}
    testbed = SimpleNamespace(model_type="videomae", num_frames=16, videotome=stored)
    plain = SimpleNamespace(model_type="videomae", num_frames=16)
    assert model_sampling(testbed) == SamplingConfig(8, "uniform", 1)
    assert model_sampling(testbed, frames=4, sampling="dense", stride=2) == SamplingConfig(4, "dense", 2)
    assert model_sampling(plain) == SamplingConfig(16, "dense", 4)  # the family's defaults
    assert model_heads(testbed) == {"verb": 8, "noun": 10}
    assert model_heads(testbed, "a:9,b:9") == {"a": 9, "b": 9}
    assert model_heads(plain) is None
    assert format_heads({"verb": 8, "noun": 10}) == "verb:8,noun:10" and format_heads(None) is None
    output = SimpleNamespace(logits=torch.arange(18.0).view(1, 18))
    split = logits_per_head(output, model_heads(testbed))
    assert list(split) == ["verb", "noun"] and torch.equal(split["noun"], torch.arange(8.0, 18.0).view(1, 10))
    assert list(logits_per_head(output, None)) == ["class"]
    with pytest.raises(ValueError, match="--heads a:9,b:8 add up to 17 logits but the model has 18"):
        logits_per_head(output, {"a": 9, "b": 8})


def test_csv_list_with_a_header_names_its_heads(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("path,verb,noun\nx/a.mp4,3,7\n\nx/b.mp4 0 9\n")
    samples = load_samples("csv", tmp_path / "labels.csv", tmp_path)
    assert [(s.id, s.labels) for s in samples] == [
        ("x/a.mp4", {"verb": 3, "noun": 7}),
        ("x/b.mp4", {"verb": 0, "noun": 9}),
    ]
    assert [s.where for s in samples] == ["line 2", "line 4"]
    (tmp_path / "short.csv").write_text("path verb noun\nx/a.mp4 3 7\nx/b.mp4 3\n")
    expected = r"short.csv:3: expected '<relative/path> <integer verb> <integer noun>' \(the header's columns\)"
    with pytest.raises(AnnotationError, match=expected):
        load_samples("csv", tmp_path / "short.csv", tmp_path)
    for header in ("path verb verb", "x/a.mp4 verb", "path 3 noun"):
        (tmp_path / "header.csv").write_text(f"{header}\nx/a.mp4 3 7\n")
        with pytest.raises(AnnotationError, match="header.csv:1: expected a header of distinct column names"):
            load_samples("csv", tmp_path / "header.csv", tmp_path)
    (tmp_path / "two.txt").write_text("x/a.mp4 3 7\n")
    with pytest.raises(AnnotationError, match=r"two.txt:1: expected '<relative/path> <integer label>' \(or first"):
        load_samples("csv", tmp_path / "two.txt", tmp_path)
    check_labels(samples, {"verb": 8, "noun": 10}, "labels.csv")
    with pytest.raises(AnnotationError, match="has a 'verb' label but the model's heads are \\['class'\\]"):
        check_labels(samples, {"class": 18}, "labels.csv")


def test_plain_lists_in_every_separator(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x/a.mp4 3\n\nx/b.mp4,1\nx/c.mp4\t0\n")
    samples = load_samples("csv", tmp_path / "a.txt", tmp_path / "videos")
    assert [(s.id, s.labels["class"]) for s in samples] == [("x/a.mp4", 3), ("x/b.mp4", 1), ("x/c.mp4", 0)]
    assert samples[0].path == tmp_path / "videos" / "x" / "a.mp4"
    (tmp_path / "bad.txt").write_text("x/a.mp4 3\nx/b.mp4 one\n")
    expected = r"bad.txt:2: expected '<relative/path> <integer label>' .*, got 'x/b.mp4 one'"
    with pytest.raises(AnnotationError, match=expected):
        load_samples("csv", tmp_path / "bad.txt", tmp_path)
    (tmp_path / "twice.txt").write_text("x/a.mp4 3\nx/a.mp4 3\n")
    with pytest.raises(AnnotationError, match=r"twice.txt:line 2: sample 'x/a.mp4' repeats line 1"):
        load_samples("csv", tmp_path / "twice.txt", tmp_path)


def test_kinetics_names_map_through_a_class_file_and_class_folders(tmp_path: Path) -> None:
    (tmp_path / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n\"air drumming\",abc,12,22,val\nabseiling,def,0,10,val\n"
    )
    (tmp_path / "air_drumming").mkdir()
    (tmp_path / "air_drumming" / "abc_000012_000022.mp4").write_bytes(b"")
    (tmp_path / "classes.txt").write_text("abseiling\nair_drumming\n")
    samples = load_samples("k400", tmp_path / "val.csv", tmp_path, classes_file=tmp_path / "classes.txt")
    assert [(s.id, s.labels["class"]) for s in samples] == [("abc_000012_000022", 1), ("def_000000_000010", 0)]
    assert samples[0].path == tmp_path / "air_drumming" / "abc_000012_000022.mp4"
    assert samples[1].path == tmp_path / "def_000000_000010.mp4"
    config = {"model_type": "x", "id2label": {"0": "air drumming", "1": "abseiling"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    samples = load_samples("k400", tmp_path / "val.csv", tmp_path, classes_file=tmp_path / "config.json")
    assert [s.labels["class"] for s in samples] == [0, 1]
    with pytest.raises(AnnotationError, match="val.csv:3: class 'abseiling' is not one of the model's 1 classes"):
        load_samples("k400", tmp_path / "val.csv", tmp_path, class_names={"air drumming": 0})


def test_videos_of_every_extension_the_decoder_reads_are_found(tmp_path: Path) -> None:
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end\na,abc,0,10\na,def,0,10\n")
    (tmp_path / "abc_000000_000010.mov").write_bytes(b"")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "def_000000_000010.M4V").write_bytes(b"")
    samples = load_samples("k400", tmp_path / "val.csv", tmp_path, class_names={"a": 0})
    assert [s.path for s in samples] == [tmp_path / "abc_000000_000010.mov", tmp_path / "a" / "def_000000_000010.M4V"]


def test_something_something_templates(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text(json.dumps({"Putting something on something": "0", "Pushing something": "1"}))
    entries = [{"id": "7", "label": "pushing a cup", "template": "Pushing [something]", "placeholders": ["a cup"]}]
    (tmp_path / "validation.json").write_text(json.dumps(entries))
    [sample] = load_samples("ssv2", tmp_path / "validation.json", tmp_path / "v")
    assert (sample.id, sample.path, sample.labels) == ("7", tmp_path / "v" / "7.webm", {"class": 1})
    entries.append({"id": "8", "template": "Dancing with [something]"})
    (tmp_path / "validation.json").write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match="entry 1: template 'Dancing with something' is not a class"):
        load_samples("ssv2", tmp_path / "validation.json", tmp_path)


def test_epic_segments(tmp_path: Path) -> None:
    assert parse_timestamp("01:02:03.50") == pytest.approx(3723.5)
    header = "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
    (tmp_path / "P02" / "videos").mkdir(parents=True)
    (tmp_path / "P02" / "videos" / "P02_03.MP4").write_bytes(b"")
    (tmp_path / "epic.csv").write_text(header + "P01_01_0,P01,P01_01,00:00:01.00,00:00:02.50,3,7\n"
                                       "P02_03_9,P02,P02_03,00:01:00.00,00:01:01.00,0,1\n")
    first, second = load_samples("epic100", tmp_path / "epic.csv", tmp_path)
    assert (first.path, first.start, first.end) == (tmp_path / "P01" / "P01_01.MP4", 1.0, 2.5)
    assert first.labels == {"verb": 3, "noun": 7}
    assert second.path == tmp_path / "P02" / "videos" / "P02_03.MP4" and second.start == 60.0
    with pytest.raises(AnnotationError, match=r"outside the model's 5 classes \(expected 0..4\)"):
        check_labels([first], {"verb": 10, "noun": 5}, "epic.csv")
    (tmp_path / "bad.csv").write_text(header + "P01_01_0,P01,P01_01,1.5s,00:00:02.50,3,7\n")
    with pytest.raises(AnnotationError, match=r"bad.csv:2: expected HH:MM:SS.ff, got '1.5s'"):
        load_samples("epic100", tmp_path / "bad.csv", tmp_path)


def _clip(verb: list[int], noun: list[int], labels: tuple[int, int]) -> dict:
    return {"type": "clip", "labels": {"verb": labels[0], "noun": labels[1]}, "error": None,
            "top5": {"verb": [[i, 0.1] for i in verb], "noun": [[i, 0.1] for i in noun]}}


def test_epic_action_needs_verb_and_noun_right() -> None:
    records = [
        _clip([1, 2], [5, 6], (1, 5)),  # both right: action right
        _clip([1, 2], [5, 6], (1, 6)),  # noun second: verb right, action wrong
        _clip([2, 1], [5, 6], (1, 5)),  # verb second: noun right, action wrong
        _clip([3, 4], [7, 8], (1, 5)),  # both wrong, not even in the top 5
        {"type": "clip", "labels": {"verb": 0, "noun": 0}, "error": "missing video: x", "top5": None},
    ]
    metrics = compute_metrics(records)
    assert metrics["clips"] == 5 and metrics["failed"] == 1 and metrics["evaluated"] == 4
    assert metrics["verb_top1"] == 0.5 and metrics["noun_top1"] == 0.5 and metrics["action_top1"] == 0.25
    assert metrics["verb_top5"] == 0.75 and metrics["noun_top5"] == 0.75


def test_parsing_of_r_and_heads() -> None:
    assert read_r("8") == 8 and isinstance(read_r("8"), int) and read_r("0.25") == 0.25
    for text in ("1.5", "1.0", "-2"):  # the command line refuses what the API refuses
        with pytest.raises(ValueError, match=f"r={text}"):
            read_r(text)
        with pytest.raises(ValueError, match=f"r={text}"):
            MergeSettings(r=float(text) if "." in text else int(text))
    assert parse_heads("verb:97,noun:300") == {"verb": 97, "noun": 300}
    with pytest.raises(ValueError, match="NAME:SIZE"):
        parse_heads("verb=97")


def _header(merge: dict | None = None, **settings: object) -> dict:
    settings = {"model": "/ckpt/tiny", "model_type": "videomae", "dataset": "csv", "annotations": "/data/val.txt",
                "merge": MergeSettings(**(merge or {})).to_dict(), **settings}
    return {"type": "header", "run": run_id(settings), "settings": settings}


def _write_run(path: Path, header: dict, predictions: list[int], labels: list[int], clips_per_s: float) -> None:
    with ResultsWriter(path, header, resume=True, new_runs=True) as writer:
        writer.write(
            {"type": "clip", "run": header["run"], "id": f"c{i}", "labels": {"class": label}, "error": None,
             "top5": {"class": [[p, 0.9], [(p + 1) % 5, 0.1]]}}
            for i, (p, label) in enumerate(zip(predictions, labels))
        )
        throughput = {"model_clips_per_s": clips_per_s, "model_frames_per_s": 16 * clips_per_s, "clips_timed": 4}
        writer.write([{"type": "summary", "run": header["run"], "throughput": throughput}])


def test_results_file_refuses_overwrites_and_drops_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    header = _header()
    with ResultsWriter(path, header, resume=False) as writer:
        writer.write([{"type": "clip", "run": header["run"], "id": "a", "labels": {}, "error": None, "top5": None}])
    with pytest.raises(ResultsError, match="already holds results; pass --resume"):
        ResultsWriter(path, header, resume=False)
    with pytest.raises(ResultsError, match=r"different settings: merge: .*'r': 0.* \(in the file\) != .*'r': 4"):
        ResultsWriter(path, _header({"r": 4}), resume=True)
    path.write_text(path.read_text() + '{"type": "clip", "id": "b", "ru')
    with ResultsWriter(path, header, resume=True) as writer:
        assert set(writer.done) == {"a"}
        writer.write([{"type": "clip", "run": header["run"], "id": "b", "labels": {}, "error": None, "top5": None}])
    [run] = read_runs(path)
    assert list(run.records) == ["a", "b"] and len(path.read_text().splitlines()) == 3


def test_report_table_and_plots(tmp_path: Path) -> None:
    import matplotlib.image

    path = tmp_path / "runs.jsonl"
    labels = [0, 1, 2, 3]
    _write_run(path, _header(), [0, 1, 2, 3], labels, 10.0)
    _write_run(path, _header({"r": 4}), [0, 1, 2, 4], labels, 15.0)
    _write_run(path, _header({"r": 8}), [0, 1, 4, 4], labels, 20.0)
    _write_run(path, _header({"r": 8, "strategy": "drop"}), [0, 4, 4, 4], labels, 21.0)
    epic = _header(model="/ckpt/tiny-epic", dataset="epic100", heads="verb:97,noun:300")
    with ResultsWriter(path, epic, resume=True, new_runs=True) as writer:
        writer.write({**_clip([1], [5], labels), "run": epic["run"], "id": str(labels)} for labels in ((1, 5), (1, 6)))
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(path), "--out", str(tmp_path / "per_checkpoint")])
    assert args.func(args) == 0
    rows = list(csv.DictReader((tmp_path / "per_checkpoint" / "table.csv").open()))
    assert [row["model"] for row in rows] == ["tiny"] * 4 + ["tiny-epic"]
    args = parser.parse_args(["report", str(path), "--by", "family", "--out", str(tmp_path / "report")])
    assert args.func(args) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert {row["model"] for row in rows} == {"videomae"}
    expected = [("0", "none"), ("8", "drop"), ("4", "merge"), ("8", "merge")]
    assert [(row["r"], row["strategy"]) for row in rows] == expected
    assert [row["csv:val top-1"] for row in rows] == ["100.00", "25.00", "75.00", "50.00"]
    assert [row["speedup"] for row in rows] == ["1.00x", "2.10x", "1.50x", "2.00x"]
    assert rows[0]["frames/s"] == "160.0"
    assert (rows[0]["epic100 verb"], rows[0]["epic100 noun"], rows[0]["epic100 action"]) == ("100.00", "50.00", "50.00")
    markdown = (tmp_path / "report" / "table.md").read_text().splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in markdown]
    assert cells[0] == list(rows[0].keys()) and cells[2] == list(rows[0].values()) and len(cells) == 2 + len(rows)
    for name in ("videomae_accuracy_vs_r.png", "videomae_accuracy_vs_speedup.png"):
        image = matplotlib.image.imread(tmp_path / "report" / name)
        assert image.shape[0] > 200 and image.shape[1] > 400 and image.std() > 0


def test_report_takes_the_last_run_of_a_setting_whole(tmp_path: Path) -> None:
    """Two runs of one setting (say, an earlier attempt in another file): the later one gives accuracy and speed."""
    labels = [0, 1, 2, 3]
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    _write_run(first, _header(), [0, 1, 2, 3], labels, 10.0)
    _write_run(first, _header({"r": 4}), [0, 0, 0, 0], labels, 10.0)
    _write_run(second, _header({"r": 4}, batch_size=2), [0, 1, 2, 2], labels, 30.0)  # same setting, new run
    [baseline, merged] = collect_rows([first, second])
    assert merged.accuracy["csv:val"]["class_top1"] == 0.75 and merged.fps == 30.0 and merged.speedup == 3.0
    assert baseline.speedup == 1.0


def test_report_reads_verb_and_noun_heads_of_any_dataset(tmp_path: Path) -> None:
    """The demo's results (dataset "testbed", verb and noun heads) get verb, noun and action columns."""
    path = tmp_path / "demo.jsonl"
    header = _header(dataset="testbed", model="testbed-vivit")
    with ResultsWriter(path, header, resume=False) as writer:
        pairs = ((1, 5), (1, 6))
        writer.write({**_clip([1], [5], labels), "run": header["run"], "id": str(labels)} for labels in pairs)
    header_row, [cells] = table(collect_rows([path]))
    row = dict(zip(header_row, cells))
    assert (row["testbed verb"], row["testbed noun"], row["testbed action"]) == ("100.00", "50.00", "50.00")


def _sweep_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    return parser


def test_sweep_grid_from_toml_and_flags(tmp_path: Path) -> None:
    for folder in ("a", "b", "c", "k400"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps({"model_type": "videomae", "id2label": {"0": "a"}}))
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end,split\na,yt,0,10,val\n")
    (tmp_path / "grid.toml").write_text(
        f'models = ["{tmp_path}/a", "{tmp_path}/b"]\nr = [0, 4, 0.5]\nstrategy = ["merge", "drop"]\n'
        f'out = "runs.jsonl"\nbatch_size = 2\n[[datasets]]\ndataset = "k400"\nroot = "{tmp_path}/k400"\n'
        f'annotations = "{tmp_path}/val.csv"\n'
    )
    parser = _sweep_parser()
    flags = ["--models", str(tmp_path / "c"), "--workers", "1"]
    runs, out = commands.sweep_runs(parser.parse_args(["sweep", "--config", str(tmp_path / "grid.toml"), *flags]))
    assert out == "runs.jsonl"
    expected = [(0, "merge"), (4, "merge"), (4, "drop"), (0.5, "merge"), (0.5, "drop")]
    assert [(run.merge.r, run.merge.strategy) for run in runs] == expected
    assert all(run.model == str(tmp_path / "c") and run.batch_size == 2 and run.workers == 1 for run in runs)
    assert runs[0].dataset == "k400" and runs[0].annotations == str(tmp_path / "val.csv")

    (tmp_path / "single.toml").write_text(  # a single value is an axis of one, not ignored
        f'models = ["{tmp_path}/a"]\nr = 4\nstrategy = "drop"\nschedule = "decreasing"\nout = "x.jsonl"\n'
        f'dataset = "csv"\nroot = "{tmp_path}"\nannotations = "{tmp_path}/list.txt"\n'
    )
    (tmp_path / "list.txt").write_text("clip.mp4 0\n")
    [run], _ = commands.sweep_runs(parser.parse_args(["sweep", "--config", str(tmp_path / "single.toml")]))
    assert run.merge == MergeSettings(4, strategy="drop", schedule="decreasing")
    args = parser.parse_args(["sweep", "--config", str(tmp_path / "single.toml"), "--strategy", "merge", "hybrid",
                              "--threshold", "0.5"])
    runs, _ = commands.sweep_runs(args)  # the threshold goes to the hybrid runs only
    assert [(run.merge.strategy, run.merge.threshold) for run in runs] == [("merge", None), ("hybrid", 0.5)]

    (tmp_path / "typo.toml").write_text('models = ["/ckpt/a"]\nbatch-size = 4\nbatchsize = 4\nstrategies = []\n')
    with pytest.raises(ValueError, match=r"typo.toml: unknown keys \['batchsize', 'strategies'\]"):
        commands.sweep_runs(parser.parse_args(["sweep", "--config", str(tmp_path / "typo.toml")]))
    args = parser.parse_args(["sweep", "--models", "/ckpt/a", "--out", "x.jsonl"])
    with pytest.raises(ValueError, match=r"sweep needs \['annotations', 'dataset', 'root'\]"):
        commands.sweep_runs(args)


def test_sweep_checks_every_run_before_the_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from videotome.cli import main

    (tmp_path / "m").mkdir()
    (tmp_path / "val.csv").write_text("")
    base = ["sweep", "--models", str(tmp_path / "m"), "--dataset", "csv", "--root", str(tmp_path),
            "--annotations", str(tmp_path / "val.csv"), "--out", str(tmp_path / "runs.jsonl")]
    assert main([*base, "--r", "0", "4", "--strategy", "merge", "hybrid"]) == 2
    assert "needs threshold" in capsys.readouterr().err
    assert main([*base[:2], str(tmp_path / "m"), str(tmp_path / "missing"), *base[3:]]) == 2
    assert "missing" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()
    # the clips of every run are read first: an empty list of the second dataset stops the sweep before the first
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "videomae", "id2label": {"0": "a"}}))
    (tmp_path / "list.txt").write_text("clip.mp4 0\n")
    (tmp_path / "grid.toml").write_text(
        f'models = ["{tmp_path}/m"]\nout = "{tmp_path}/runs.jsonl"\n[[datasets]]\ndataset = "csv"\n'
        f'root = "{tmp_path}"\nannotations = "{tmp_path}/list.txt"\n[[datasets]]\ndataset = "csv"\n'
        f'root = "{tmp_path}"\nannotations = "{tmp_path}/val.csv"\n'
    )
    assert main(["sweep", "--config", str(tmp_path / "grid.toml")]) == 2
    assert f"annotation file {tmp_path / 'val.csv'} lists no clips" in capsys.readouterr().err
    assert not (tmp_path / "runs.jsonl").exists()


def test_python_dash_m_videotome_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "videotome", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: videotome")


#: annotation files that list no clip, per format: empty, and a header (or an empty list) alone
NO_CLIPS = {
    "csv": ["", "path verb noun\n"],
    "k400": ["", "label,youtube_id,time_start,time_end,split\n"],
    "ssv2": ["", "[]"],
    "epic100": ["", "narration_id,participant_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"],
}


def _eval_refused(tmp_path: Path, capsys: pytest.CaptureFixture, dataset: str, annotations: Path) -> str:
    """``videotome eval`` of a checkpoint without weights: the one error line (exit 2), from before any model work."""
    from videotome.cli import main

    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"model_type": "videomae", "id2label": {"0": "a"}}))
    (tmp_path / "labels.json").write_text(json.dumps({"a": "0"}))
    capsys.readouterr()
    code = main(["eval", "--model", str(model), "--dataset", dataset, "--root", str(tmp_path),
                 "--annotations", str(annotations), "--out", str(tmp_path / "runs.jsonl"), "--device", "cpu"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("videotome eval: error: ")
    assert not (tmp_path / "runs.jsonl").exists()
    return lines[0]


@pytest.mark.parametrize("dataset", sorted(NO_CLIPS))
def test_an_annotation_file_without_clips_is_refused(tmp_path: Path, capsys, dataset: str) -> None:
    for number, text in enumerate(NO_CLIPS[dataset]):
        annotations = tmp_path / f"empty{number}.txt"
        annotations.write_text(text)
        line = _eval_refused(tmp_path, capsys, dataset, annotations)
        assert f"annotation file {annotations} lists no clips" in line


def test_an_annotations_directory_is_refused_as_such(tmp_path: Path, capsys) -> None:
    (tmp_path / "annotations").mkdir()
    line = _eval_refused(tmp_path, capsys, "csv", tmp_path / "annotations")
    assert f"{tmp_path / 'annotations'} is a directory; expected an annotation file" in line
    from videotome.cli import main

    assert main(["sweep", "--models", str(tmp_path / "model"), "--dataset", "csv", "--root", str(tmp_path),
                 "--annotations", str(tmp_path / "annotations"), "--out", str(tmp_path / "runs.jsonl")]) == 2
    assert "is a directory; expected an annotation file" in capsys.readouterr().err
