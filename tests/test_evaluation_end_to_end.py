"""End-to-end tests of ``videotome eval/sweep/report`` on real encoded videos and a tiny VideoMAE.

The videos are cut from a synthetic scene drawn here (a panning texture with moving shapes, 132 frames at 96x54)
and encoded with PyAV (H.264 mp4, VP9 webm), so the suite needs nothing outside the repository.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers

from conftest import missing_flags

from videotome.cli import main
from videotome.evaluation import commands
from videotome.evaluation.datasets import AnnotationError
from videotome.evaluation.harness import EvalConfig, EvaluationError, evaluate
from videotome.evaluation.logits import logits_path, read_logits
from videotome.evaluation.results import ResultsError, read_runs
from videotome.evaluation.video import SamplingConfig, load_preprocessing, preprocess, read_clip
from videotome.plan import MergeSettings


SIZE = (96, 54)
FPS = 25
FRAMES = 132
CLIP_STARTS = (0, 12, 30, 48, 66, 84, 100, 112)  # 8 clips of 20 frames (the last one shorter: 132 frames in all)
CLIP_LENGTH = 20
CLASSES = ["abseiling", "air drumming", "archery", "baking cookies", "balloon blowing"]
KILL_CLIPS = 48  # the kill test lists the 8 clips 6 times over, so the eval is still running when it is killed
KILL_AFTER = 4  # clip lines on disk before the kill


def _scene() -> list[np.ndarray]:
    """``FRAMES`` RGB frames of a seeded scene: a panning, slowly recolouring texture and two moving discs.

    Texture gives the codecs real work and the model varied patches; the motion and colour drift make every clip
    cut from the scene different from the others.
    """
    rng = np.random.default_rng(0)
    width, height = SIZE
    texture = rng.integers(0, 256, size=(height, 2 * width, 3)).astype(np.float64)
    for axis in (0, 1):  # smooth the noise into blobs a few pixels wide
        texture = sum(np.roll(texture, shift, axis=axis) for shift in range(-2, 3)) / 5
    y, x = np.mgrid[:height, :width]
    frames = []
    for t in range(FRAMES):
        phase = 2 * np.pi * t / FRAMES
        tint = 0.6 + 0.4 * np.array([np.cos(phase), 1.0, np.sin(phase)]) ** 2
        image = np.roll(texture, -t, axis=1)[:, :width] * tint
        for speed, radius, colour in ((1.0, 9, (255, 40, 40)), (-1.7, 6, (30, 220, 255))):
            cx = width / 2 + (width / 2 - radius) * np.sin(speed * phase)
            cy = height / 2 + (height / 2 - radius) * np.cos(2 * speed * phase)
            image[(x - cx) ** 2 + (y - cy) ** 2 < radius**2] = colour
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return frames


def _encode(path: Path, frames: list[np.ndarray], codec: str, options: dict[str, str] | None = None) -> None:
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every annotation format over the same 8 clips (plus EPIC-style segments of one long video)."""
    root = tmp_path_factory.mktemp("videos")
    frames = _scene()
    labels = [i % len(CLASSES) for i in range(len(CLIP_STARTS))]
    (root / "clips").mkdir()
    lines = []
    for i, (start, label) in enumerate(zip(CLIP_STARTS, labels)):
        _encode(root / "clips" / f"clip{i}.mp4", frames[start : start + CLIP_LENGTH], "libx264")
        _encode(root / f"{1000 + i}.webm", frames[start : start + CLIP_LENGTH], "libvpx-vp9")
        folder = root / "k400" / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"yt{i:08d}_{i:06d}_{i + 10:06d}.mp4").symlink_to(root / "clips" / f"clip{i}.mp4")
        lines.append(f"clips/clip{i}.mp4 {label}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    (root / "list_tabs.csv").write_text("\n".join(line.replace(" ", "\t") for line in lines) + "\n")
    rows = [f"{CLASSES[label]},yt{i:08d},{i},{i + 10},val" for i, label in enumerate(labels)]
    (root / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "\n".join(rows) + "\n")
    templates = {name: name.capitalize() + " [something]" for name in CLASSES}
    names = {t.replace("[", "").replace("]", ""): str(i) for i, t in enumerate(templates.values())}
    (root / "labels.json").write_text(json.dumps(names))
    entries = [
        {"id": str(1000 + i), "label": "x", "template": templates[CLASSES[label]], "placeholders": ["x"]}
        for i, label in enumerate(labels)
    ]
    (root / "validation.json").write_text(json.dumps(entries))
    (root / "P01" / "videos").mkdir(parents=True)
    _encode(root / "P01" / "videos" / "P01_01.MP4", frames, "libx264")
    epic = ["narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,"
            "start_frame,stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes"]
    for i in range(6):
        start, stop = f"00:00:0{i // 2}.{(i % 2) * 50:02d}", f"00:00:0{i // 2 + 1}.{(i % 2) * 50 + 20:02d}"
        epic.append(f"P01_01_{i},P01,P01_01,{start},{start},{stop},0,0,x,v,{i % 3},n,{(i * 2) % 4},[],[]")
    (root / "EPIC_100_validation.csv").write_text("\n".join(epic) + "\n")
    return root


def _save_model(directory: Path, num_labels: int, id2label: dict[int, str] | None = None) -> Path:
    torch.manual_seed(0)
    config = transformers.VideoMAEConfig(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, num_labels=num_labels, id2label=id2label,
        label2id={v: k for k, v in id2label.items()} if id2label else None,
    )
    transformers.VideoMAEForVideoClassification(config).save_pretrained(directory)
    processor = {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_resize": True,
                 "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                 "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 5-class VideoMAE with Kinetics-style class names, and its preprocessor config."""
    return _save_model(tmp_path_factory.mktemp("videomae"), 5, dict(enumerate(CLASSES)))


@pytest.fixture(scope="session")
def epic_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny VideoMAE with 3 + 4 logits, read as verb and noun heads with --heads verb:3,noun:4."""
    return _save_model(tmp_path_factory.mktemp("videomae_epic"), 7)


@pytest.fixture(scope="session")
def motionformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Motionformer with verb (3) and noun (4) heads, saved without a preprocessor config."""
    from videotome.models import MotionformerConfig, MotionformerForVideoClassification

    torch.manual_seed(0)
    config = MotionformerConfig(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, head_sizes=[3, 4], head_names=["verb", "noun"],
    )
    directory = tmp_path_factory.mktemp("motionformer")
    MotionformerForVideoClassification(config).save_pretrained(directory)
    return directory


def _config(model_dir: Path, data: Path, **overrides: object) -> EvalConfig:
    values = {"model": str(model_dir), "dataset": "csv", "root": str(data), "annotations": str(data / "list.txt"),
              "batch_size": 3, "workers": 0, "progress": False}
    return EvalConfig(**{**values, **overrides})


def _clip_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["type"] == "clip"]


def _predictions(path: Path) -> dict[str, list[int]]:
    return {line["id"]: [i for i, _ in line["top5"]["class"]] for line in _clip_lines(path)}


def _direct_logits(model_dir: Path, paths: list[Path], **patch: object) -> torch.Tensor:
    """Reference: decode and preprocess each clip, run the model (patched with ``patch`` if given) directly."""
    model = transformers.VideoMAEForVideoClassification.from_pretrained(model_dir).eval()
    if patch:
        import videotome

        videotome.patch(model, **patch)
    pipeline = load_preprocessing(model_dir, "videomae", 32)
    pixels = torch.stack([preprocess(read_clip(p, SamplingConfig(4, "dense", 4)), pipeline) for p in paths])
    with torch.inference_mode():
        return model(pixel_values=pixels).logits


def _direct_top5(model_dir: Path, paths: list[Path], **patch: object) -> list[list[int]]:
    """The top-5 classes of :func:`_direct_logits`."""
    return _direct_logits(model_dir, paths, **patch).topk(5).indices.tolist()


def _same_logits(found: dict, expected: dict) -> bool:
    """Whether two ``read_logits`` results hold the same clips, heads and (to float tolerance) values."""
    return found.keys() == expected.keys() and all(
        found[clip].keys() == expected[clip].keys()
        and all(torch.allclose(found[clip][h], expected[clip][h], atol=1e-5) for h in found[clip])
        for clip in found
    )


def _launch(args: list[str], launcher: list[str] | None = None, **streams: object) -> subprocess.Popen:
    """Start ``videotome`` with ``args`` in a fresh process group (or several processes, under torchrun)."""
    command = (launcher or [sys.executable]) + ["-m", "videotome"] + args
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, text=True, env=environment, start_new_session=True, **streams)


def _cli(tmp_path: Path, *args: str, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the commands in a fresh process (or several, under torchrun); kill the whole group on a timeout."""
    process = _launch(list(args), launcher, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _complete_lines(path: Path) -> list[dict]:
    """The lines of a results file that a running eval has finished writing (the last piece may be half-written)."""
    text = path.read_text() if path.is_file() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _wait_for_clips(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll the results file of a running eval until ``count`` clip lines are on disk; fail if it ends or stalls."""
    deadline = time.monotonic() + timeout
    while sum(line["type"] == "clip" for line in _complete_lines(path)) < count:
        if process.poll() is not None:
            pytest.fail(f"the eval exited (code {process.returncode}) before {count} clip lines were in {path}")
        if time.monotonic() > deadline:
            pytest.fail(f"fewer than {count} clip lines in {path} after {timeout} s")
        time.sleep(0.002)


def _eval_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["eval", "--model", str(model_dir), "--dataset", "csv", "--root", str(data), "--annotations",
            str(data / "list.txt"), "--batch-size", "3", "--workers", "0", "--no-progress", "--out", str(out), *extra]


def test_predictions_match_a_direct_forward_pass(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    summary = evaluate(_config(model_dir, data), out=out)
    expected = _direct_top5(model_dir, [data / "clips" / f"clip{i}.mp4" for i in range(len(CLIP_STARTS))])
    assert len({tuple(top5) for top5 in expected}) > 1  # the scene's clips differ, so a mixed-up clip would show
    predictions = _predictions(out)
    assert [predictions[f"clips/clip{i}.mp4"] for i in range(len(CLIP_STARTS))] == expected
    labels = [i % len(CLASSES) for i in range(len(CLIP_STARTS))]
    top1 = np.mean([e[0] == label for e, label in zip(expected, labels)])
    top5 = np.mean([label in e for e, label in zip(expected, labels)])
    assert summary["metrics"]["class_top1"] == pytest.approx(top1)
    assert summary["metrics"]["class_top5"] == pytest.approx(top5)
    assert summary["metrics"]["clips"] == len(CLIP_STARTS) and summary["metrics"]["failed"] == 0
    assert summary["throughput"]["model_clips_per_s"] > 0 and summary["throughput"]["end_to_end_clips_per_s"] > 0
    header = json.loads(out.read_text().splitlines()[0])
    assert header["type"] == "header" and header["versions"]["torch"] == torch.__version__
    assert header["settings"]["sampling"] == {"frames": 4, "sampling": "dense", "stride": 4}


@pytest.mark.parametrize(
    ("dataset", "annotations", "root", "video"),
    [
        ("csv", "list_tabs.csv", ".", "clips/clip{i}.mp4"),
        ("k400", "k400.csv", "k400", "clips/clip{i}.mp4"),
        ("ssv2", "validation.json", ".", "{id}.webm"),
    ],
)
def test_every_annotation_format(
    model_dir: Path, data: Path, tmp_path: Path, dataset: str, annotations: str, root: str, video: str
) -> None:
    out = tmp_path / "run.jsonl"
    config = _config(model_dir, data, dataset=dataset, annotations=str(data / annotations), root=str(data / root))
    summary = evaluate(config, out=out)
    assert summary["metrics"]["clips"] == len(CLIP_STARTS) and summary["metrics"]["failed"] == 0
    lines = _clip_lines(out)
    assert [line["labels"]["class"] for line in lines] == [i % len(CLASSES) for i in range(len(CLIP_STARTS))]
    paths = [data / video.format(i=i, id=1000 + i) for i in range(len(CLIP_STARTS))]
    assert [[i for i, _ in line["top5"]["class"]] for line in lines] == _direct_top5(model_dir, paths)


@pytest.mark.parametrize(
    ("family", "sampling", "mean"),
    [("vivit", {"frames": 4, "sampling": "dense", "stride": 2}, [0.5] * 3),
     ("timesformer", {"frames": 4, "sampling": "uniform", "stride": 1}, [0.485, 0.456, 0.406])],
)
def test_other_families_use_their_defaults(
    family: str, sampling: dict, mean: list[float], data: Path, tmp_path: Path
) -> None:
    common = {"image_size": 32, "num_frames": 4, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "num_labels": 5}
    if family == "vivit":
        model = transformers.VivitForVideoClassification(transformers.VivitConfig(tubelet_size=[2, 16, 16], **common))
    else:
        model = transformers.TimesformerForVideoClassification(transformers.TimesformerConfig(patch_size=16, **common))
    model.save_pretrained(tmp_path / family)
    out = tmp_path / "run.jsonl"
    evaluate(_config(tmp_path / family, data, workers=2), out=out)
    settings = json.loads(out.read_text().splitlines()[0])["settings"]
    assert settings["sampling"] == sampling and settings["preprocessing"]["mean"] == mean
    pipeline = load_preprocessing(tmp_path / family, family, 32)
    clip = read_clip(data / "clips" / "clip3.mp4", SamplingConfig(**sampling))
    with torch.inference_mode():
        expected = model.eval()(pixel_values=preprocess(clip, pipeline)[None]).logits.topk(5).indices[0].tolist()
    assert _predictions(out)["clips/clip3.mp4"] == expected


def test_epic_heads_and_action_accuracy(epic_model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "epic.jsonl"
    config = _config(epic_model_dir, data, dataset="epic100", annotations=str(data / "EPIC_100_validation.csv"),
                     heads="verb:3,noun:4")
    summary = evaluate(config, out=out)
    lines = _clip_lines(out)
    assert len(lines) == 6 and all(set(line["top5"]) == {"verb", "noun"} for line in lines)
    assert all(len(line["top5"]["verb"]) == 3 and len(line["top5"]["noun"]) == 4 for line in lines)
    verb = [line["top5"]["verb"][0][0] == line["labels"]["verb"] for line in lines]
    noun = [line["top5"]["noun"][0][0] == line["labels"]["noun"] for line in lines]
    metrics = summary["metrics"]
    assert metrics["verb_top1"] == pytest.approx(np.mean(verb))
    assert metrics["noun_top1"] == pytest.approx(np.mean(noun))
    assert metrics["action_top1"] == pytest.approx(np.mean([v and n for v, n in zip(verb, noun)]))
    model = transformers.VideoMAEForVideoClassification.from_pretrained(epic_model_dir).eval()
    clip = read_clip(data / "P01" / "videos" / "P01_01.MP4", SamplingConfig(4, "dense", 4), start=1.0, end=2.2)
    with torch.inference_mode():
        logits = model(pixel_values=preprocess(clip, load_preprocessing(epic_model_dir, "videomae", 32))[None]).logits
    segment = next(line for line in lines if line["id"] == "P01_01_2")
    assert segment["top5"]["verb"][0][0] == int(logits[0, :3].argmax())
    assert segment["top5"]["noun"][0][0] == int(logits[0, 3:].argmax())


def test_motionformer_two_heads_on_epic(motionformer_dir: Path, data: Path, tmp_path: Path) -> None:
    from videotome.models import MotionformerForVideoClassification

    out = tmp_path / "epic.jsonl"
    config = _config(motionformer_dir, data, dataset="epic100", annotations=str(data / "EPIC_100_validation.csv"))
    summary = evaluate(config, out=out)
    assert summary["metrics"]["clips"] == 6 and "action_top1" in summary["metrics"]
    header = json.loads(out.read_text().splitlines()[0])
    assert header["settings"]["sampling"] == {"frames": 4, "sampling": "dense", "stride": 4}
    assert header["settings"]["preprocessing"]["mean"] == [0.5, 0.5, 0.5]  # family default: no processor file
    model = MotionformerForVideoClassification.from_pretrained(motionformer_dir).eval()
    clip = read_clip(data / "P01" / "videos" / "P01_01.MP4", SamplingConfig(4, "dense", 4), start=0.5, end=1.7)
    with torch.inference_mode():
        pixels = preprocess(clip, load_preprocessing(motionformer_dir, "motionformer", 32))[None]
        heads = model(pixel_values=pixels).head_logits
    segment = next(line for line in _clip_lines(out) if line["id"] == "P01_01_1")
    assert segment["top5"]["verb"][0][0] == int(heads["verb"].argmax())
    assert segment["top5"]["noun"][0][0] == int(heads["noun"].argmax())


def test_epic_without_heads_is_refused_before_any_work(epic_model_dir: Path, data: Path, tmp_path: Path) -> None:
    config = _config(epic_model_dir, data, dataset="epic100", annotations=str(data / "EPIC_100_validation.csv"))
    with pytest.raises(AnnotationError, match="--heads"):
        evaluate(config, out=tmp_path / "epic.jsonl")
    assert not (tmp_path / "epic.jsonl").exists()


def test_saved_logits_are_those_of_a_direct_forward_pass(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    evaluate(_config(model_dir, data, save_logits=True, limit=5), out=out)
    (run,) = read_runs(out)
    assert run.header["class_names"] == {"class": CLASSES}  # the model's id2label, in the header
    found = read_logits(out)
    expected = _direct_logits(model_dir, [data / "clips" / f"clip{i}.mp4" for i in range(5)])
    assert sorted(found) == [f"clips/clip{i}.mp4" for i in range(5)]
    assert all(set(found[f"clips/clip{i}.mp4"]) == {"class"} for i in range(5))
    assert torch.allclose(torch.stack([found[f"clips/clip{i}.mp4"]["class"] for i in range(5)]), expected, atol=1e-5)
    assert sorted(path.name for path in (logits_path(out) / run.id).iterdir()) == [
        "00000.safetensors", "00001.safetensors"]  # a shard per batch of 3


def test_bad_videos_are_recorded_and_the_run_goes_on(model_dir: Path, data: Path, tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "junk.mp4").write_bytes(b"not a video" * 100)
    good = (data / "clips" / "clip1.mp4").read_bytes()
    (tmp_path / "clips" / "truncated.mp4").write_bytes(good[: len(good) // 2])  # index at the end: cannot open
    with av.open(str(data / "clips" / "clip1.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    _encode(tmp_path / "faststart.mp4", frames, "libx264", {"movflags": "faststart"})
    whole = (tmp_path / "faststart.mp4").read_bytes()
    (tmp_path / "clips" / "cut.mp4").write_bytes(whole[: len(whole) // 2])  # index first: opens, frames stop early
    (tmp_path / "clips" / "clip0.mp4").symlink_to(data / "clips" / "clip0.mp4")
    listing = "clips/clip0.mp4 0\nclips/junk.mp4 1\nclips/missing.mp4 2\nclips/truncated.mp4 3\nclips/cut.mp4 4\n"
    (tmp_path / "list.txt").write_text(listing)
    out = tmp_path / "run.jsonl"
    summary = evaluate(_config(model_dir, tmp_path, annotations=str(tmp_path / "list.txt"), workers=2), out=out)
    assert summary["metrics"]["clips"] == 5 and summary["metrics"]["failed"] == 4
    errors = {line["id"]: line["error"] for line in _clip_lines(out)}
    assert errors["clips/clip0.mp4"] is None
    assert "missing video" in errors["clips/missing.mp4"]
    assert "cannot decode" in errors["clips/junk.mp4"] and errors["clips/truncated.mp4"]
    assert "truncated video" in errors["clips/cut.mp4"]
    with pytest.raises(EvaluationError, match="junk.mp4.*--strict"):
        evaluate(_config(model_dir, tmp_path, annotations=str(tmp_path / "list.txt"), strict=True),
                 out=tmp_path / "strict.jsonl")


@pytest.mark.skipif(importlib.util.find_spec("decord") is not None, reason="decord is installed")
def test_decord_is_only_used_when_installed(model_dir: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--decoder decord needs the decord package"):
        evaluate(_config(model_dir, data, decoder="decord"), out=tmp_path / "run.jsonl")


def test_malformed_annotations_stop_before_any_work(
    model_dir: Path, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "list.txt").write_text("clips/clip0.mp4 0\nclips/clip1.mp4\n")
    out = tmp_path / "run.jsonl"
    with pytest.raises(AnnotationError, match=r"list.txt:2: expected '<relative/path> <integer label>'"):
        evaluate(_config(model_dir, data, annotations=str(tmp_path / "list.txt")), out=out)
    (tmp_path / "list.txt").write_text("clips/clip0.mp4 0\nclips/clip1.mp4 7\n")
    with pytest.raises(AnnotationError, match=r"list.txt:line 2: .*label 7 is outside the model's 5 classes"):
        evaluate(_config(model_dir, data, annotations=str(tmp_path / "list.txt")), out=out)
    (tmp_path / "k400.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nabseiling,a,0,10,val\nyodel,b,0,10,val\n"
    )
    with pytest.raises(AnnotationError, match=r"k400.csv:3: class 'yodel' is not one of the model's 5 classes"):
        evaluate(_config(model_dir, data, dataset="k400", annotations=str(tmp_path / "k400.csv")), out=out)
    assert not out.exists()
    argv = _eval_args(model_dir, data, out)
    argv[argv.index("--annotations") + 1] = str(tmp_path / "k400.csv")
    argv[argv.index("--dataset") + 1] = "k400"
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight loader's progress bar
    assert error.startswith("videotome eval: error:") and "k400.csv:3: class 'yodel'" in error


def test_killed_run_resumes_without_loss_or_duplicates(model_dir: Path, data: Path, tmp_path: Path) -> None:
    """SIGKILL a real ``videotome eval`` mid-run, then ``--resume``: each clip once, predicted as without the kill."""
    (tmp_path / "clips").mkdir()
    listing = []
    for n in range(KILL_CLIPS):
        (tmp_path / "clips" / f"clip{n}.mp4").symlink_to(data / "clips" / f"clip{n % len(CLIP_STARTS)}.mp4")
        listing.append(f"clips/clip{n}.mp4 {n % len(CLASSES)}")
    annotations = tmp_path / "list.txt"
    annotations.write_text("\n".join(listing) + "\n")
    out = tmp_path / "run.jsonl"
    args = _eval_args(model_dir, data, out, "--root", str(tmp_path), "--annotations", str(annotations),
                      "--batch-size", "1", "--save-logits")
    with (tmp_path / "killed.log").open("w") as log:
        process = _launch(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for_clips(out, KILL_AFTER, process)
        finally:
            process.kill()
            code = process.wait()
    assert code == -signal.SIGKILL, f"the eval ended by itself (code {code}) before the kill: give it more clips"
    survived = _complete_lines(out)
    assert not any(line["type"] == "summary" for line in survived), "the eval finished before the kill"
    done = sum(line["type"] == "clip" for line in survived)
    assert KILL_AFTER <= done < KILL_CLIPS, f"killed with {done} of {KILL_CLIPS} clips done: give the eval more clips"
    written = out.read_text()
    kept = written[: written.rfind("\n") + 1]
    if written == kept:  # the kill fell between two writes, as it nearly always does: tear a line as a write would
        with out.open("a") as handle:
            handle.write('{"type": "clip", "run": "torn li')
    config = _config(model_dir, tmp_path, annotations=str(annotations), batch_size=1)
    with pytest.raises(ResultsError, match="already holds results; pass --resume"):
        evaluate(config, out=out)
    difference = r"different settings: sampling: .*'stride': 4.* \(in the file\) != .*'stride': 2"
    with pytest.raises(ResultsError, match=difference):
        evaluate(_config(model_dir, tmp_path, annotations=str(annotations), stride=2), resume=True, out=out)
    resumed = _cli(tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "top-1" in resumed.stdout and "clips/s" in resumed.stdout
    assert out.read_text().startswith(kept)  # the lines written before the kill are kept, the torn tail is gone
    ids = [line["id"] for line in _clip_lines(out)]
    assert sorted(ids) == sorted(f"clips/clip{n}.mp4" for n in range(KILL_CLIPS)) and len(set(ids)) == len(ids)
    reference = tmp_path / "reference.jsonl"
    evaluate(_config(model_dir, tmp_path, annotations=str(annotations), save_logits=True), out=reference)  # by 3
    assert _predictions(out) == _predictions(reference)
    assert _same_logits(read_logits(out), read_logits(reference))
    shards = sorted((logits_path(out) / read_runs(out)[0].id).glob("*.safetensors"))
    keys = [key for shard in shards for key in safetensors.torch.load_file(shard)]
    assert sorted(keys) == sorted(f"class/{clip}" for clip in ids)  # exactly one entry per clip
    summary = evaluate(config, resume=True, out=out)
    assert summary["metrics"]["clips"] == KILL_CLIPS and len(_clip_lines(out)) == KILL_CLIPS


def test_torchrun_two_processes_match_one(model_dir: Path, data: Path, tmp_path: Path) -> None:
    single, double = tmp_path / "single.jsonl", tmp_path / "double.jsonl"
    evaluate(_config(model_dir, data, save_logits=True), out=single)
    result = _cli(tmp_path, *_eval_args(model_dir, data, double, "--save-logits"), launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _clip_lines(double)
    assert len(lines) == len(CLIP_STARTS) and len({line["id"] for line in lines}) == len(CLIP_STARTS)
    assert _predictions(double) == _predictions(single)
    assert len(read_logits(double)) == len(CLIP_STARTS) and _same_logits(read_logits(double), read_logits(single))
    summaries = [json.loads(line) for line in double.read_text().splitlines() if '"summary"' in line]
    assert summaries[-1]["throughput"]["world_size"] == 2
    assert result.stdout.count("top-1") == 1  # only rank 0 reports


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]


def _plan_file(model_dir: Path, path: Path, **settings: object) -> Path:
    """The plan file (``videotome tune --json``'s) of ``settings`` for the model in ``model_dir``."""
    import videotome

    model = transformers.VideoMAEForVideoClassification.from_pretrained(model_dir)
    path.write_text(json.dumps(videotome.plan(videotome.patch(model, **settings)).to_dict()))
    return path


def _every_eval_flag(model_dir: Path, data: Path, out: Path) -> list[str]:
    """``videotome eval`` with every one of its flags (a test below checks that none is left out); the plan file
    holds the settings the reduction flags repeat."""
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    plan = _plan_file(model_dir, out.with_suffix(".plan.json"), r=1, strategy="hybrid", threshold=0.5, prop_attn=True)
    return ["eval", "--model", str(model_dir), "--dataset", "k400", "--annotations", str(data / "k400.csv"),
            "--root", str(data / "k400"), "--plan", str(plan), "--reduce", "1", "--schedule", "constant", "--strategy", "hybrid",
            "--threshold", "0.5", "--prop-attn", "on", "--divided", "per_frame", "--seed", "0", "--frames", "4",
            "--sampling", "dense", "--stride", "4", "--heads", "class:5", "--classes", str(data / "classes.txt"),
            "--limit", "6", "--decoder", "pyav", "--batch-size", "2", "--workers", "1", "--device", "cpu",
            "--strict", "--no-progress", "--save-logits", "--out", str(out), "--resume", "--threads", "1"]


def test_eval_under_torchrun_with_every_flag(model_dir: Path, data: Path, tmp_path: Path) -> None:
    single, double = tmp_path / "single.jsonl", tmp_path / "double.jsonl"
    assert missing_flags("eval", _every_eval_flag(model_dir, data, single)) == []
    result = _cli(tmp_path, *_every_eval_flag(model_dir, data, single))
    assert result.returncode == 0, result.stderr[-3000:]
    result = _cli(tmp_path, *_every_eval_flag(model_dir, data, double), launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_clip_lines(double)) == 6 and _predictions(double) == _predictions(single)
    (summary,) = [json.loads(line) for line in double.read_text().splitlines() if '"summary"' in line]
    assert summary["throughput"]["world_size"] == 2
    header = json.loads(double.read_text().splitlines()[0])["settings"]
    assert header["merge"]["strategy"] == "hybrid" and header["merge"]["threshold"] == 0.5


def test_eval_runs_a_plan_file_as_its_flags(model_dir: Path, data: Path, tmp_path: Path) -> None:
    plan = _plan_file(model_dir, tmp_path / "plan.json", r=3, schedule="decreasing", strategy="drop")
    by_flags, by_plan = tmp_path / "flags.jsonl", tmp_path / "plan.jsonl"
    evaluate(_config(model_dir, data, merge=MergeSettings(3, schedule="decreasing", strategy="drop")), out=by_flags)
    result = _cli(tmp_path, *_eval_args(model_dir, data, by_plan, "--plan", str(plan)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _predictions(by_plan) == _predictions(by_flags)
    assert read_runs(by_plan)[0].settings == read_runs(by_flags)[0].settings
    result = _cli(tmp_path, *_eval_args(model_dir, data, tmp_path / "refused.jsonl", "--plan", str(plan),
                                        "--reduce", "5"))
    assert result.returncode == 2
    assert result.stderr.strip() == f"videotome eval: error: --plan {plan} sets r=3; a flag says 5"


def test_eval_refuses_a_plan_for_another_model_shape(motionformer_dir: Path, model_dir: Path, data: Path,
                                                     tmp_path: Path) -> None:
    plan = _plan_file(model_dir, tmp_path / "plan.json", r=2)
    with pytest.raises(ValueError, match="the plan was made for .* layers of tokens"):
        evaluate(_config(motionformer_dir, data, plan=str(plan)), out=tmp_path / "run.jsonl")


def _every_sweep_flag(model_dir: Path, data: Path, tmp_path: Path, out: Path) -> list[str]:
    """``videotome sweep`` with every one of its flags: a TOML file, and flags that override it."""
    config = tmp_path / "sweep.toml"
    config.write_text(f'models = ["{model_dir}"]\nr = [0, 9]\nstrategy = "drop"\nlimit = 8\n')
    return ["sweep", "--config", str(config), "--models", str(model_dir), "--reduce", "0", "1",
            "--schedule", "constant", "decreasing", "--strategy", "merge", "random_merge", "--threshold", "0.9",
            "--prop-attn", "default", "--divided", "per_frame", "--seed", "0", "--dataset", "csv",
            "--annotations", str(data / "list.txt"), "--root", str(data), "--frames", "4", "--sampling", "dense",
            "--stride", "4", "--heads", "class:5", "--classes", str(data / "classes.txt"), "--limit", "5",
            "--decoder", "pyav", "--batch-size", "2", "--workers", "0", "--device", "cpu", "--strict",
            "--no-progress", "--save-logits", "--out", str(out), "--threads", "1"]


def test_sweep_under_torchrun_with_every_flag(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.jsonl"
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    argv = _every_sweep_flag(model_dir, data, tmp_path, out)
    assert missing_flags("sweep", argv) == []
    result = _cli(tmp_path, *argv, launcher=TORCHRUN)
    assert result.returncode == 0, result.stderr[-3000:]
    merges = [run.settings["merge"] for run in read_runs(out)]
    # flags override the file: r 0 and 1, two schedules, two strategies (r = 0 is one unmerged run)
    assert [(m["r"], m["schedule"], m["strategy"]) for m in merges] == [
        (0, "constant", "merge"), (1, "constant", "merge"), (1, "constant", "random_merge"),
        (1, "decreasing", "merge"), (1, "decreasing", "random_merge")]
    assert all(len(run.records) == 5 for run in read_runs(out))
    assert all(len(read_logits(out, run=run.id)) == 5 for run in read_runs(out))  # one folder of logits a run
    assert result.stdout.count("top-1") == len(merges)  # rank 0 alone reports, once a run


def test_merged_run_and_sweep_and_report(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep.jsonl"
    (tmp_path / "sweep.toml").write_text(
        f'models = ["{model_dir}"]\nr = [0, 2]\nstrategy = ["merge", "drop"]\nout = "{out}"\n'
        f'dataset = "csv"\nroot = "{data}"\nannotations = "{data / "list.txt"}"\nbatch_size = 4\nworkers = 0\n'
        "progress = false\n"
    )
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "--config", str(tmp_path / "sweep.toml")])
    assert args.func(args) == 0
    runs = read_runs(out)
    merges = [run.settings["merge"] for run in runs]
    assert [(merge["r"], merge["strategy"]) for merge in merges] == [(0, "merge"), (2, "merge"), (2, "drop")]
    assert all(len(run.records) == len(CLIP_STARTS) for run in runs)
    size = out.stat().st_size
    assert args.func(args) == 0 and out.stat().st_size == size  # everything done: nothing re-run
    paths = [data / "clips" / f"clip{i}.mp4" for i in range(len(CLIP_STARTS))]
    for run in runs[1:]:
        expected = _direct_top5(model_dir, paths, r=2, strategy=run.settings["merge"]["strategy"], seed=0)
        assert [[i for i, _ in run.records[f"clips/clip{n}.mp4"]["top5"]["class"]] for n in range(8)] == expected
    args = parser.parse_args(["report", str(out), "--out", str(tmp_path / "report")])
    assert args.func(args) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert [(row["r"], row["strategy"]) for row in rows] == [("0", "none"), ("2", "drop"), ("2", "merge")]
    assert rows[0]["speedup"] == "1.00x"


def test_report_from_real_runs(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    evaluate(_config(model_dir, data), out=out)
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["report", str(out), "--out", str(tmp_path / "report")])
    assert args.func(args) == 0
    rows = list(csv.DictReader((tmp_path / "report" / "table.csv").open()))
    assert len(rows) == 1 and rows[0]["speedup"] == "1.00x" and float(rows[0]["clips/s"]) > 0
