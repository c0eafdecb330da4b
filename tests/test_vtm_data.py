"""LVU / segment datasets, metrics, training and resuming."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from videotome.vtm.data import (
    LIKE_OFFSET,
    VIEW_OFFSET,
    FeatureVideos,
    SyntheticSaliency,
    read_lvu_csv,
    read_segment_csv,
    sliding_starts,
)
from videotome.vtm.model import VTMConfig
from videotome.vtm.train import (
    TrainConfig,
    evaluate,
    load_model,
    predict_video,
    read_checkpoint,
    split_metric,
    train,
    warmup_cosine,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_lvu_classification_rows(tmp_path: Path) -> None:
    csv = write(tmp_path / "scene" / "train.csv", "scene youtube_id imdb_id\n3 abc tt01\n0 def tt02\n\n")
    assert read_lvu_csv(csv, "scene") == [("abc", 3.0), ("def", 0.0)]


def test_lvu_regression_transforms(tmp_path: Path) -> None:
    like = write(tmp_path / "like.csv", "like dislike youtube_id imdb_id\n90 10 vid1 tt1\n")
    view = write(tmp_path / "view.csv", "view_count youtube_id imdb_id\n1000 vid2 tt2\n")
    assert read_lvu_csv(like, "like_ratio")[0] == ("vid1", pytest.approx(9.0 - LIKE_OFFSET))
    assert read_lvu_csv(view, "view_count")[0] == ("vid2", pytest.approx(math.log(1000) - VIEW_OFFSET))


def test_lvu_bad_rows_are_named(tmp_path: Path) -> None:
    csv = write(tmp_path / "scene.csv", "header\n7 abc tt01\n")
    with pytest.raises(ValueError, match=r"scene.csv:2: label 7 is outside 0..5"):
        read_lvu_csv(csv, "scene")
    with pytest.raises(ValueError, match="not an LVU task"):
        read_lvu_csv(csv, "mood")
    short = write(tmp_path / "short.csv", "header\n1 abc\n")
    with pytest.raises(ValueError, match="short.csv:2"):
        read_lvu_csv(short, "genre")


def test_segment_rows(tmp_path: Path) -> None:
    csv = write(tmp_path / "train.csv", "video_id,label\nP03_cereals,2\nP04_tea 9\n")
    assert read_segment_csv(csv, 10) == [("P03_cereals", 2.0), ("P04_tea", 9.0)]
    with pytest.raises(ValueError, match="outside 0..9"):
        read_segment_csv(write(tmp_path / "bad.csv", "h\nv 10\n"), 10)


def test_metrics() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert split_metric(scores, torch.tensor([1.0, 1.0, 1.0]), False, "val") == {"val_accuracy": pytest.approx(2 / 3)}
    assert split_metric(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0]), True, "test") == {"test_mse": 2.5}


def test_warmup_then_cosine() -> None:
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)


def make_features(directory: Path, lengths: dict[str, int], per_frame: int = 5, channels: int = 16) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for index, (video, frames) in enumerate(lengths.items()):
        tokens = torch.arange(frames).float()[:, None, None].expand(frames, per_frame, channels) + index
        save_file({"tokens": tokens.contiguous(), "motion": torch.rand(frames, per_frame)},
                  str(directory / f"{video}.safetensors"))


def test_windows_segments_and_missing_videos(tmp_path: Path) -> None:
    make_features(tmp_path, {"long": 20, "short": 3})
    rows = [("long", 1.0), ("short", 0.0), ("absent", 2.0)]
    train_set = FeatureVideos(rows, tmp_path, frames=8, train=True, use_motion=True)
    assert train_set.missing == ["absent"] and len(train_set) == 2
    frames = train_set[0]["tokens"][:, 0, 0]
    assert (frames.diff() == 1).all() and 0 <= frames[0] <= 12
    assert train_set[1]["tokens"][:, 0, 0].tolist() == [1, 2, 3, 3, 3, 3, 3, 3]
    assert train_set[0]["motion"].shape == (8, 5)
    train_set.set_epoch(1)
    segments = FeatureVideos(rows, tmp_path, frames=4, sampling="segments")
    assert segments[0]["tokens"][:, 0, 0].tolist() == [2, 7, 12, 17]
    assert sliding_starts(20, 8) == list(range(13)) and sliding_starts(3, 8) == [0]


def test_sliding_window_evaluation_sums_probabilities() -> None:
    config = VTMConfig(in_channels=16, num_outputs=3, channels=(8, 8), windows=(2, 4), num_heads=2, partition="naive")
    from videotome.vtm.model import VideoTokenMerger

    model = VideoTokenMerger(config).eval()
    sample = {"tokens": torch.randn(9, 5, 16)}
    total = predict_video(model, sample, frames=4, stride=1, regression=False, chunk=4)
    assert total.sum() == pytest.approx(len(sliding_starts(9, 4)))


def lvu_config(tmp_path: Path, **overrides) -> TrainConfig:
    make_features(tmp_path / "features", {f"v{i}": 6 + i for i in range(4)})
    for split in ("train", "val"):
        write(tmp_path / "lvu" / "genre" / f"{split}.csv",
              "genre youtube_id imdb_id\n" + "".join(f"{i % 4} v{i} tt{i}\n" for i in range(4)))
    model = VTMConfig(channels=(8, 8), windows=(2, 4), num_heads=2, partition="learnable")
    settings = dict(dataset="lvu", root=str(tmp_path / "lvu"), features=str(tmp_path / "features"), task="genre",
                    frames=4, epochs=2, warmup_epochs=1, batch_size=2, out=str(tmp_path / "run"), model=model)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_lvu_training_and_checkpoint_evaluation(tmp_path: Path) -> None:
    metrics = train(lvu_config(tmp_path))
    assert metrics["epoch"] == 2 and 0 <= metrics["val_accuracy"] <= 1
    model, config = load_model(tmp_path / "run" / "last.pt")
    assert config.model.in_channels == 16 and config.model.num_outputs == 4
    assert evaluate(model, config, "val") == {"val_accuracy": metrics["val_accuracy"]}


def synthetic_config(out: Path, epochs: int) -> TrainConfig:
    model = VTMConfig(channels=(16, 16, 16), windows=(2, 6, 12), num_heads=2, partition="learnable")
    return TrainConfig(dataset="synthetic", out=str(out), epochs=epochs, warmup_epochs=1, batch_size=8,
                       synthetic_videos=24, synthetic_eval_videos=8, model=model)


def test_resumed_training_matches_uninterrupted(tmp_path: Path) -> None:
    train(synthetic_config(tmp_path / "straight", epochs=3))
    train_until(synthetic_config(tmp_path / "resumed", epochs=3), stop_after=1)
    with (tmp_path / "resumed" / "log.jsonl").open("a") as log:
        log.write('{"epoch": 2, "train_loss": -1.0}\n')  # logged, then stopped before its checkpoint
    train(synthetic_config(tmp_path / "resumed", epochs=3))
    straight = read_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = read_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 3
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"]
    log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [line.split(",")[0] for line in log] == ['{"epoch": 1', '{"epoch": 2', '{"epoch": 3']
    assert "-1.0" not in log[1]


def train_until(config: TrainConfig, stop_after: int) -> None:
    """Run the first ``stop_after`` epochs of a longer schedule, as an interrupted run would leave them."""
    import videotome.vtm.train as training

    original = training.save_checkpoint
    saved = []

    def save_then_stop(*args, **kwargs):
        original(*args, **kwargs)
        saved.append(1)
        if len(saved) == stop_after:
            raise KeyboardInterrupt

    training.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(config)
    finally:
        training.save_checkpoint = original


def test_synthetic_task_hides_a_few_salient_tokens() -> None:
    dataset = SyntheticSaliency(4, salient_per_video=6)
    sample = dataset[2]
    assert sample["tokens"].shape == (12, 16, 32)
    assert int(sample["salient"].sum()) == 6
    assert torch.equal(dataset[2]["tokens"], sample["tokens"])
    along_marker = sample["tokens"].reshape(-1, 32) @ dataset.marker
    assert along_marker[sample["salient"].flatten()].mean() > along_marker[~sample["salient"].flatten()].mean() + 2
