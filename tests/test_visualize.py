"""``videotome visualize`` end to end on videos written here with PyAV and tiny checkpoints of three families (joint
VideoMAE, divided TimeSformer, frame-wise DINOv2), and on the packaged testbed VideoMAE."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import transformers

from videotome.analysis.nearest import kl_divergence
from videotome.analysis.pictures import owner_map
from videotome.cli import main
from videotome.evaluation.logits import read_logits

pytestmark = pytest.mark.usefixtures("one_thread")

FPS = 10
PROCESSOR = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "do_resize": True,
             "do_center_crop": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
COMMON = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
              intermediate_size=64)


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def moving_scene(count: int = 12, seed: int = 0) -> list[np.ndarray]:
    """A smooth random texture panning right, 40x48 pixels."""
    texture = np.random.default_rng(seed).integers(0, 256, (40, 96, 3)).astype(np.float64)
    for axis in (0, 1):
        texture = sum(np.roll(texture, shift, axis=axis) for shift in range(-3, 4)) / 7
    return [np.clip(np.roll(texture, -2 * t, axis=1)[:, :48], 0, 255).astype(np.uint8) for t in range(count)]


def save(model: torch.nn.Module, directory: Path) -> Path:
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(PROCESSOR))
    return directory


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    return {
        "videomae": save(transformers.VideoMAEForVideoClassification(
            transformers.VideoMAEConfig(num_frames=4, tubelet_size=2, num_labels=3, **COMMON)), root / "videomae"),
        "timesformer": save(transformers.TimesformerForVideoClassification(
            transformers.TimesformerConfig(num_frames=4, num_labels=3, **COMMON)), root / "timesformer"),
        # configured for larger images than its processor feeds it, as the published DINOv2 (518 against 224)
        "dinov2": save(transformers.Dinov2Model(transformers.Dinov2Config(**{**COMMON, "image_size": 64})),
                       root / "dinov2"),
    }


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "scene.mp4", moving_scene())


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def check_tokens(out: Path, steps: int, side: int = 4) -> dict:
    """tokens.json: every patch held by at most one token, sizes summing to the patches kept."""
    tokens = json.loads((out / "tokens.json").read_text())
    held = [tuple(patch) for token in tokens["tokens"] for patch in token["patches"]]
    assert len(held) == len(set(held))  # no patch painted by two tokens
    assert tokens["patches"] == steps * side * side
    assert sum(token["size"] for token in tokens["tokens"]) == len(held) == tokens["patches"] - tokens["dropped"]
    return tokens


@pytest.mark.parametrize(("family", "frames", "steps"), [("videomae", 4, 2), ("timesformer", 4, 4), ("dinov2", 4, 4)])
def test_visualize_writes_the_picture_video_and_json(models, video, tmp_path, family, frames, steps):
    out = tmp_path / "out"
    argv = ["visualize", "--model", str(models[family]), "--video", str(video), "--out", str(out), "--reduce", "2",
            "--layers", "0", "2", "--frames", str(frames), "--no-progress"]
    assert main(argv) == 0
    assert (out / "merges.png").stat().st_size > 0 and (out / "layers.png").stat().st_size > 0
    assert decoded_frames(out / "merges.mp4") == frames
    with av.open(str(out / "merges.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.format.name == "yuv420p"
        assert stream.width % 2 == 0 and stream.height % 2 == 0
    tokens = check_tokens(out, steps)
    assert tokens["dropped"] == 0 and len(tokens["tokens"]) < tokens["patches"]  # merge: something merged
    layers = json.loads((out / "layers.json").read_text())["layers"]
    assert [row["layer"] for row in layers] == [0, 1, 2] and layers[0]["merged"] > 0


def test_dropped_patches_belong_to_no_token(models, video, tmp_path):
    out = tmp_path / "out"
    argv = ["visualize", "--model", str(models["videomae"]), "--video", str(video), "--out", str(out),
            "--reduce", "3", "--strategy", "drop", "--no-progress"]
    assert main(argv) == 0
    assert check_tokens(out, 2)["dropped"] > 0


def test_the_owner_map_refuses_a_patch_held_twice():
    grid = torch.tensor([[0, 0, 0], [0, 0, 1]])
    assert owner_map(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), grid).tolist() == [[[0, -1]]]
    with pytest.raises(ValueError, match="more than one token"):
        owner_map(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), grid)


def test_duplicate_layer_shows_its_copies(models, video, tmp_path):
    out = tmp_path / "out"
    argv = ["visualize", "--model", str(models["videomae"]), "--video", str(video), "--out", str(out),
            "--reduce", "2", "--duplicate-layer", "1", "--times", "3", "--no-progress"]
    assert main(argv) == 0
    duplication = json.loads((out / "layers.json").read_text())["duplication"]
    assert duplication["layer"] == 1 and [row["layer"] for row in duplication["stats"]] == [0, 1, 2]
    tokens = check_tokens(out, 2)
    assert tokens["shown"] == "layer 1 x 3" and len(tokens["tokens"]) == 32 - 3 * 2


@pytest.fixture(scope="module")
def testbed_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("testbed")
    assert main(["testbed", "generate", "--out", str(root), "--count", "3"]) == 0
    write_video(root / "grey.mp4", [np.full((32, 32, 3), 128, np.uint8)] * 16)
    return root


def test_testbed_videomae_and_cross_clip_share_of_splices(testbed_clips, tmp_path):
    source = testbed_clips / "videos" / "val-00000.mp4"

    def share(donor: Path) -> float:
        out = tmp_path / donor.stem
        argv = ["visualize", "--model", "testbed:videomae", "--video", str(source), "--splice", str(donor),
                "--out", str(out), "--no-progress"]
        assert main(argv) == 0
        return check_tokens(out, 8, side=4)["cross_clip_share"]

    itself = share(source)
    others = [share(testbed_clips / "videos" / f"val-0000{i}.mp4") for i in (1, 2)]
    constant = share(testbed_clips / "grey.mp4")
    assert itself > max(others) and itself > constant
    assert constant > 0


def test_splice_nearest_picks_the_nearest_clip_of_the_same_class(testbed_clips, tmp_path):
    """Three clips given one class: the donor is the other clip whose saved softmax is nearest by KL divergence."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path verb noun\n" + "".join(f"videos/val-0000{i}.mp4 0 5\n" for i in range(3)))
    run = tmp_path / "run.jsonl"
    assert main(["eval", "--model", "testbed:videomae", "--dataset", "csv", "--root", str(testbed_clips),
                 "--annotations", str(labels), "--out", str(run), "--save-logits", "--workers", "0",
                 "--no-progress", "--device", "cpu"]) == 0
    logits = read_logits(run)
    source = "videos/val-00000.mp4"
    others = [clip for clip in logits if clip != source]
    expected = min(others, key=lambda clip: kl_divergence(logits[source], logits[clip]))
    out = tmp_path / "nearest"
    assert main(["visualize", "--model", "testbed:videomae", "--video", str(testbed_clips / source),
                 "--splice-nearest", str(run), "--video-id", source, "--out", str(out), "--no-progress"]) == 0
    tokens = json.loads((out / "tokens.json").read_text())
    assert Path(tokens["donor"]) == (testbed_clips / expected).resolve() and 0 < tokens["cross_clip_share"] <= 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--video", "missing.mp4"], "missing video: missing.mp4"),
    (["--video", "BAD"], "cannot decode"),
    (["--reduce", "1000"], "r=1000 in layer 0 is more than the model can remove"),
    (["--layers", "3"], "layer 3 is out of range; the model has layers 0 to 2"),
    (["--times", "2"], "--times needs --duplicate-layer"),
    (["--splice-every", "2"], "--splice-every needs --splice"),
    (["--video-id", "x"], "--video-id needs --splice-nearest"),
    (["--model", "BERT"], "holds a 'bert' model"),
    (["--model", "testbed:nope"], "no packaged testbed checkpoint 'nope'"),
])
def test_bad_input_is_one_line(models, video, tmp_path, capsys, extra, message):
    (tmp_path / "BAD").write_bytes(b"not a video at all" * 100)
    (tmp_path / "BERT").mkdir()
    (tmp_path / "BERT" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    values = {"--model": str(models["videomae"]), "--video": str(video)}
    for flag, value in zip(extra[::2], extra[1::2]):
        values[flag] = str(tmp_path / value) if value in ("BAD", "BERT") else value
    argv = ["visualize", *[part for item in values.items() for part in item], "--out", str(tmp_path / "out"),
            "--no-progress"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("videotome visualize: error: ") and error.count("\n") == 1
    assert message in error

