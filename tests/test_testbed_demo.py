"""`videotome testbed train`, `testbed generate` and `demo` end to end, on tiny settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import videotome
from videotome.cli import build_parser, main
from videotome.evaluation.results import read_runs
from videotome.options import from_args
from videotome.plan import SCHEDULES, STRATEGIES, MergeSettings
from videotome.testbed import train as train_module
from videotome.testbed.data import Clips, validation_set
from videotome.testbed.demo import DemoConfig, run_demo
from videotome.testbed.export import GenerateConfig
from videotome.testbed.models import (
    ARCHITECTURES,
    CHECKPOINTS,
    build_model,
    checkpoint_dir,
    head_logits,
    load_checkpoint,
    read_metadata,
    sinusoid_table,
)
from videotome.testbed.settings import (
    DEFAULT_STRATEGIES,
    THRESHOLDS,
    default_settings,
    full_settings,
    is_divided,
    operating_point,
    operating_r,
    patched_copy,
)
from videotome.testbed.train import TrainConfig
from videotome.testbed.visualize import frame_steps

ROW_KEYS = {"model", "strategy", "r", "schedule", "divided", "verb", "noun", "action", "clips_per_s", "speedup"}


def run(argv: list[str]) -> int:
    """Run a command with the real parser (--threads included), letting its exceptions through."""
    args = build_parser().parse_args(argv)
    return args.func(args)


DOCS = Path(__file__).resolve().parents[1] / "docs"

pytestmark = pytest.mark.usefixtures("one_thread")


def markdown_cells(path: Path) -> list[dict[str, str]]:
    """A Markdown table's body rows, each as {column title: cell}."""
    lines = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in path.read_text().splitlines()]
    return [dict(zip(lines[0], cells)) for cells in lines[2:]]


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = ["videomae", "timesformer"]
    if not all((checkpoint_dir(arch) / "config.json").is_file() for arch in models):
        pytest.fail("the packaged testbed checkpoints are missing (see src/videotome/testbed/checkpoints/RECIPES.md)")
    out = tmp_path / "demo"
    argv = ["demo", "--models", *models, "--limit", "16", "--timing-clips", "16", "--repeats", "1"]
    assert run([*argv, "--out", str(out), "--json", "--no-progress"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["rows"]
    assert captured.err == ""  # --no-progress: no bar of ours, nor transformers' "Loading weights"
    for name in ("table.md", "table.csv", "results.jsonl", "merges.png", "testbed-videomae_accuracy_vs_speedup.png",
                 "testbed-timesformer_accuracy_vs_r.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "rows.json").exists()
    documented = set(re.findall(r"`demo_out/([\w.-]+)`", (DOCS / "testbed.md").read_text()))
    assert {"table.md", "merges.png", "testbed-ARCH_accuracy_vs_r.png"} <= documented
    written = {path.name for path in out.iterdir()}
    assert {name.replace("ARCH", arch) for name in documented for arch in models} <= written  # docs/testbed.md is true
    runs = read_runs(out / "results.jsonl")
    assert len(runs) == 10 and len(rows) == 10 and all(len(result.records) == 16 for result in runs)

    # `videotome report` of the demo's results.jsonl is the demo's own table, cell for cell
    assert main(["report", str(out / "results.jsonl"), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "table.md").read_text() == (out / "table.md").read_text()
    cells = {(row["model"], row["strategy"]): row for row in markdown_cells(out / "table.md")}
    assert len(cells) == 10 and cells[("testbed-videomae", "merge")]["r"] == "12"  # 9.6% of 128 tokens
    assert cells[("testbed-timesformer", "merge")]["r"] == "1"  # 18/196 of 16 tokens per frame

    # every number of the table and of the JSON rows is that run's in results.jsonl
    by_setting = {(row["model"], json.dumps(row["merge"], sort_keys=True)): row for row in rows}
    clips = validation_set(16)
    for arch in models:
        model = load_checkpoint(arch)
        mine = [result for result in runs if result.settings["model"] == f"testbed-{arch}"]
        settings = [MergeSettings.from_dict(result.settings["merge"]) for result in mine]
        assert settings == default_settings(model, arch)
        assert [merge.strategy for merge in settings[1:]] == ["merge", "drop", "random_drop", "random_merge"]
        assert all(merge.divided == "per_frame" and merge.seed == 0 for merge in settings)
        baseline_rate = mine[0].summaries[-1]["throughput"]["model_clips_per_s"]
        for result, merge in zip(mine, settings):
            metrics, speed = result.summaries[-1]["metrics"], result.summaries[-1]["throughput"]
            rate = speed["model_clips_per_s"]
            assert speed["timing"] == "interleaved" and speed["timing_batch"] == 16
            row = by_setting[(f"testbed-{arch}", json.dumps(merge.to_dict(), sort_keys=True))]
            accuracy = row["accuracy"]["testbed"]
            for head in ("verb", "noun", "action"):
                assert accuracy[f"{head}_top1"] == metrics[f"{head}_top1"]
            assert row["clips_per_s"] == rate and row["speedup"] == pytest.approx(rate / baseline_rate)
            line = cells[(f"testbed-{arch}", merge.strategy if merge.reduces else "none")]
            assert line["r"] == str(merge.r) and line["schedule"] == (merge.schedule if merge.reduces else "none")
            for head in ("verb", "noun", "action"):
                assert line[f"testbed {head}"] == f"{100 * metrics[f'{head}_top1']:.2f}"
            assert line["clips/s"] == f"{rate:.1f}" and line["speedup"] == f"{rate / baseline_rate:.2f}x"
            direct = row_accuracy(model, merge, clips)
            assert direct == pytest.approx({head: metrics[f"{head}_top1"] for head in direct})


def row_accuracy(model: torch.nn.Module, merge: MergeSettings, clips: Clips) -> dict[str, float]:
    """Verb, noun and action accuracy of ``model`` with a demo run's merge settings (unpatched when they remove
    nothing), scored directly on ``clips`` (one batch, as the demo scores 16 clips)."""
    videotome.unpatch(model)
    if merge.reduces:
        videotome.patch(model, merge)
    with torch.inference_mode():
        logits = head_logits(model, clips.pixels())
    verb = logits["verb"].argmax(-1) == clips.verb
    noun = logits["noun"].argmax(-1) == clips.noun
    return {"verb": verb.float().mean().item(), "noun": noun.float().mean().item(),
            "action": (verb & noun).float().mean().item()}


def test_demo_settings_are_the_library_settings() -> None:
    assert DEFAULT_STRATEGIES == tuple(strategy for strategy in STRATEGIES if strategy != "hybrid")
    for arch in ("videomae", "timesformer"):
        model = build_model(arch)
        r = operating_r(model, arch)
        default, full = default_settings(model, arch), full_settings(model, arch)
        assert default == [MergeSettings()] + [MergeSettings(r, strategy=name) for name in DEFAULT_STRATEGIES]
        assert full[: len(default)] == default and len(set(full)) == len(full)
        assert [merge.threshold for merge in full if merge.strategy == "hybrid"] == list(THRESHOLDS)
        assert {merge.schedule for merge in full if merge.reduces} == set(SCHEDULES)
        assert any(merge.divided == "aligned" for merge in full) == is_divided(arch)
        assert operating_point(model, arch) == MergeSettings(r)
        assert patched_copy(model, MergeSettings()) is model
    assert operating_r(build_model("videomae"), "videomae") == 12  # 9.6% of 128 tokens
    assert operating_r(build_model("timesformer"), "timesformer") == 1  # 18/196 of 16 tokens per frame


def test_flags_keep_their_defaults() -> None:
    parser = build_parser()
    demo = from_args(DemoConfig, parser.parse_args(["demo"]))
    assert demo == DemoConfig(models=ARCHITECTURES, limit=None, out="demo_out", full=False, batch_size=128,
                              timing_clips=128, repeats=3, checkpoints=str(CHECKPOINTS), progress=True)
    assert (demo.clips, DemoConfig(full=True).clips, DemoConfig(limit=7, full=True).clips) == (512, 1024, 7)
    assert not parser.parse_args(["demo"]).json and parser.parse_args(["demo", "--json"]).json
    given = from_args(DemoConfig, parser.parse_args(["demo", "--no-progress", "--models", "vivit", "--full"]))
    assert (given.progress, given.models, given.full) == (False, ("vivit",), True)
    args = parser.parse_args(["testbed", "train", "--arch", "vivit", "--out", "x"])
    assert from_args(TrainConfig, args) == TrainConfig(
        arch="vivit", out="x", steps=800, batch_size=64, lr=1.5e-3, weight_decay=0.05, warmup=50, seed=0,
        eval_clips=512, save_every=50, pool=0, threads=None, init=None,
    )
    assert not args.overwrite and args.threads is None
    generate = from_args(GenerateConfig, parser.parse_args(["testbed", "generate", "--out", "x"]))
    assert generate == GenerateConfig(out="x", split="val", count=64, seed=None)


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
    assert run([*argv, "--steps", "2", "--save-every", "1", "--threads", "1"]) == 0
    assert seeds == [1]  # only the second step ran: the first was in the saved state
    assert not (out / train_module.STATE_FILE).exists()
    record = read_metadata(out)
    assert record["arch"] == "videomae" and record["command"].startswith("videotome testbed train --arch=videomae")
    assert record["config"]["threads"] == 1 and "--threads=1" in record["command"]  # cli.py's flag, recorded
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
        run_demo(models=["resnet"], out=tmp_path)
    assert not any(tmp_path.iterdir())
    assert main(["testbed", "generate", "--split", "train", "--out", str(tmp_path / "clips")]) == 2
    assert capsys.readouterr().err == (
        "videotome testbed generate: error: the train split needs a seed (only the validation split has a fixed "
        "one)\n"
    )
    assert not (tmp_path / "clips").exists()


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
