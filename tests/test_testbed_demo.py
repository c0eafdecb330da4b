"""`videotome testbed train`, `testbed generate` and `demo` end to end, on tiny settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch

import videotome
from videotome.cli import build_parser, main
from videotome.evaluation.results import read_runs
from videotome.testbed import train as train_module
from videotome.testbed.data import Clips, validation_set
from videotome.testbed.demo import run_demo
from videotome.testbed.models import (
    build_model,
    checkpoint_dir,
    head_logits,
    load_checkpoint,
    read_metadata,
    sinusoid_table,
)
from videotome.testbed.visualize import frame_steps

ROW_KEYS = {"model", "strategy", "r", "schedule", "divided", "verb", "noun", "action", "clips_per_s", "speedup"}


def run(argv: list[str]) -> int:
    """Run a command with the real parser (--threads included), letting its exceptions through."""
    args = build_parser().parse_args(argv)
    return args.func(args)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = ["videomae", "timesformer"]
    if not all((checkpoint_dir(arch) / "config.json").is_file() for arch in models):
        pytest.fail("the packaged testbed checkpoints are missing (see src/videotome/testbed/checkpoints/RECIPES.md)")
    out = tmp_path / "demo"
    argv = ["demo", "--models", *models, "--limit", "16", "--timing-clips", "16", "--repeats", "1"]
    assert run([*argv, "--out", str(out), "--json", "--no-progress"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 10 and all(ROW_KEYS <= set(row) for row in rows)
    assert {row["r"] for row in rows if row["model"] == "videomae" and row["r"]} == {12}  # 9.6% of 128 tokens
    assert {row["r"] for row in rows if row["model"] == "timesformer" and row["r"]} == {1}  # 18/196 of 16 per frame
    assert all(row["divided"] == "per_frame" for row in rows if row["model"] == "timesformer" and row["r"])
    for name in ("table.md", "results.jsonl", "accuracy_vs_speedup.png", "merges.png"):
        assert (out / name).stat().st_size > 0
    runs = read_runs(out / "results.jsonl")
    assert len(runs) == 10 and all(len(run.records) == 16 for run in runs)
    assert "| videomae | merge | 12 | constant |" in (out / "table.md").read_text()
    clips = validation_set(16)
    for arch in models:
        model = load_checkpoint(arch)
        model_rows = [row for row in rows if row["model"] == arch]
        assert [row["strategy"] for row in model_rows] == ["none", "merge", "drop", "random_drop", "random_merge"]
        baseline = model_rows[0]
        assert baseline["r"] == 0 and baseline["speedup"] == 1.0
        for row in model_rows:
            assert row["speedup"] == pytest.approx(row["clips_per_s"] / baseline["clips_per_s"])
            recorded = {key: row[key] for key in ("verb", "noun", "action")}
            assert row_accuracy(model, row, clips) == pytest.approx(recorded)


def row_accuracy(model: torch.nn.Module, row: dict[str, Any], clips: Clips) -> dict[str, float]:
    """Verb, noun and action accuracy of ``model`` with a demo row's setting (unpatched for r = 0), scored directly
    on ``clips`` (one batch, as the demo scores 16 clips, with its seed for the random strategies)."""
    videotome.unpatch(model)
    if row["r"]:
        videotome.patch(model, row["r"], schedule=row["schedule"], strategy=row["strategy"],
                        divided=row["divided"] or "per_frame", seed=0)
    with torch.inference_mode():
        logits = head_logits(model, clips.pixels())
    verb = logits["verb"].argmax(-1) == clips.verb
    noun = logits["noun"].argmax(-1) == clips.noun
    return {"verb": verb.float().mean().item(), "noun": noun.float().mean().item(),
            "action": (verb & noun).float().mean().item()}


def test_generate_writes_the_validation_clips_losslessly(tmp_path: Path) -> None:
    assert run(["testbed", "generate", "--count", "2", "--out", str(tmp_path)]) == 0
    listing = (tmp_path / "labels.csv").read_text().splitlines()
    clips = validation_set(2)
    assert listing == ["path verb noun"] + [
        f"videos/val-0000{i}.mp4 {int(clips.verb[i])} {int(clips.noun[i])}" for i in range(2)
    ]
    with av.open(str(tmp_path / "videos" / "val-00001.mp4")) as container:
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
    assert np.array_equal(frames, clips.video[1].permute(0, 2, 3, 1).numpy())


def test_train_resumes_from_its_saved_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model"
    argv = ["testbed", "train", "--arch", "videomae", "--out", str(out), "--batch-size", "4", "--eval-clips", "8"]
    seeds: list[int] = []
    real_generate = train_module.generate

    def recording_generate(split: str, count: int, seed: int, spec: object) -> object:
        seeds.append(seed)
        return real_generate(split, count, seed, spec)

    monkeypatch.setattr(train_module, "generate", recording_generate)
    config = train_module.TrainConfig(arch="videomae", out=str(out), steps=2, batch_size=4, save_every=1)
    model = train_module.build_model("videomae")
    optimizer = torch.optim.AdamW(model.parameters())
    out.mkdir()
    train_module._save_state(out / train_module.STATE_FILE, model, optimizer, config, step=1, elapsed=1.0)
    assert run([*argv, "--steps", "2", "--save-every", "1"]) == 0
    assert seeds == [1]  # only the second step ran: the first was in the saved state
    assert not (out / train_module.STATE_FILE).exists()
    record = read_metadata(out)
    assert record["arch"] == "videomae" and record["command"].startswith("videotome testbed train --arch=videomae")
    assert set(record["validation_accuracy"]) == {"verb", "noun", "action"}
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()


def test_fine_tuning_starts_from_the_init_checkpoint_and_keeps_its_record(tmp_path: Path) -> None:
    small = dict(arch="vivit", steps=1, batch_size=4, eval_clips=8)
    base = train_module.train(train_module.TrainConfig(out=str(tmp_path / "base"), **small))
    # lr 0 leaves every weight where the init checkpoint put it, so the result must equal it exactly
    tuned = train_module.train(
        train_module.TrainConfig(out=str(tmp_path / "tuned"), init=str(tmp_path / "base"), lr=0.0, seed=1, **small)
    )
    expected = load_checkpoint(tmp_path / "base").state_dict()
    for name, value in load_checkpoint(tmp_path / "tuned").state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert tuned["init_record"]["command"] == base["command"]
    assert "--init=" in tuned["command"]
    assert tuned["total_train_seconds"] >= base["train_seconds"]
    with pytest.raises(ValueError, match="init must be a testbed checkpoint directory .*'nowhere'"):
        train_module.TrainConfig(arch="vivit", out="x", init="nowhere")
    with pytest.raises(ValueError, match="holds a VivitForVideoClassification, not a VideoMAE"):
        train_module.train(train_module.TrainConfig(**{**small, "arch": "videomae"}, out=str(tmp_path / "x"),
                                                    init=str(tmp_path / "base")))


def test_timesformer_starts_with_time_embeddings_that_tell_frames_apart() -> None:
    """Hugging Face starts them at zero, which leaves temporal attention blind to the order of the frames."""
    table = sinusoid_table(8, 64)[0]
    assert torch.equal(table[0, 0::2], torch.zeros(32)) and torch.equal(table[0, 1::2], torch.ones(32))
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    time = build_model("timesformer").timesformer.embeddings.time_embeddings[0]
    assert torch.equal(time, table)
    assert torch.cdist(time, time).fill_diagonal_(1.0).min() > 0.1


def test_resuming_with_another_configuration_is_refused(tmp_path: Path) -> None:
    config = train_module.TrainConfig(arch="videomae", out=str(tmp_path), steps=2, batch_size=4)
    model = train_module.build_model("videomae")
    train_module._save_state(tmp_path / train_module.STATE_FILE, model, torch.optim.AdamW(model.parameters()),
                             config, step=1, elapsed=1.0)
    with pytest.raises(ValueError, match="resuming needs the same"):
        train_module.train(train_module.TrainConfig(arch="videomae", out=str(tmp_path), steps=2, batch_size=8))


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        train_module.TrainConfig(arch="resnet", out="x")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        train_module.TrainConfig(arch="vivit", out="x", steps=0)
    with pytest.raises(ValueError, match="threads must be at least 1 .* got 0"):
        train_module.TrainConfig(arch="vivit", out="x", threads=0)
    with pytest.raises(SystemExit):
        run(["demo", "--threads", "0", "--limit", "1"])
    assert "argument --threads: expected an integer >= 1, got '0'" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"unknown testbed models \['resnet'\]; expected some of \('videomae'"):
        run_demo(["resnet"], out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_demo_refuses_a_limit_below_one_and_missing_checkpoints_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["demo", "--limit", "0", "--out", str(out)]) == 2
    expected = "videotome demo: error: limit must be between 1 and 1024 (validation clips), got 0\n"
    assert capsys.readouterr().err == expected
    (tmp_path / "ckpt" / "videomae").mkdir(parents=True)
    argv = ["demo", "--models", "videomae", "vivit", "--checkpoints", str(tmp_path / "ckpt"), "--out", str(out)]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"videotome demo: error: no testbed checkpoint in {tmp_path / 'ckpt' / 'videomae'} ")
    assert error.count("\n") == 1 and not out.exists()


def test_merges_figure_panels_are_the_frames_each_model_sees() -> None:
    steps = frame_steps(build_model("timesformer"), 16)  # sees 8 of 16 frames, one token step each
    assert steps == [None, 0, None, 1, None, 2, None, 3, None, 4, None, 5, None, 6, None, 7]
    assert frame_steps(build_model("videomae"), 16) == [index // 2 for index in range(16)]  # 2-frame tubelets


def test_train_refuses_to_replace_a_finished_run_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    small = ["--out", str(out), "--steps", "1", "--batch-size", "4", "--eval-clips", "4"]
    assert main(["testbed", "train", "--arch", "vivit", *small]) == 0
    capsys.readouterr()
    assert main(["testbed", "train", "--arch", "videomae", *small]) == 2
    assert capsys.readouterr().err == (
        f"videotome testbed train: error: {out} holds a finished vivit run; pass --overwrite to replace it, "
        "or choose another --out\n"
    )
    assert read_metadata(out)["arch"] == "vivit"
    assert main(["testbed", "train", "--arch", "videomae", *small, "--overwrite"]) == 0
    assert read_metadata(out)["arch"] == "videomae"
    assert load_checkpoint(out).config.model_type == "videomae"
    assert "--overwrite" not in read_metadata(out)["command"]  # the recorded command stays reproducible
