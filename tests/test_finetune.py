"""``videotome finetune`` on testbed clips the tests write (``videotome testbed generate``: labelled mp4 files).

The trained testbed checkpoints (small models of each family, built from configs) get a new head for a new label
space (the digit of each clip, 10 classes); a few epochs on 32 clips must lower the loss and lift validation top-1
far above chance (0.1). A run stopped mid-epoch and resumed ends with bit-identical weights: every random draw (clip
order, augmentation, new heads) is seeded by the epoch and the clip, and Trainer restores the optimizer, schedule
and RNG states; on the CPU the arithmetic is then the same. Under torchrun (gloo on CPUs) two processes train as one.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import tiny_model
from transformers import TrainerCallback

import videotome
from videotome.cli import main
from videotome.evaluation.harness import EvalConfig, evaluate
from videotome.evaluation.video import SamplingConfig, sample_indices
from videotome.finetune.recipes import RECIPES
from videotome.finetune.train import FinetuneConfig, finetune
from videotome.plan import MergeSettings
from videotome.testbed.data import NOUNS, VERBS
from videotome.testbed.export import GenerateConfig, write_videos

pytestmark = pytest.mark.usefixtures("one_thread")
TRAIN_CLIPS, VAL_CLIPS = 32, 16
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training and validation clips, with digit lists (``path digit``) beside each split's ``labels.csv``."""
    root = tmp_path_factory.mktemp("clips")
    for split, count, seed in (("train", TRAIN_CLIPS, 1), ("val", VAL_CLIPS, None)):
        write_videos(GenerateConfig(out=str(root / split), split=split, count=count, seed=seed))
        rows = [line.split() for line in (root / split / "labels.csv").read_text().splitlines()[1:]]
        (root / split / "digits.txt").write_text("".join(f"{path} {noun}\n" for path, _, noun in rows))
    return root


def _config(clips: Path, out: Path, arch: str = "videomae", **options) -> FinetuneConfig:
    """Digits (a new 10-class head) from a testbed checkpoint: SGD at 0.05 with no warm-up for every family (the
    recipes' rates are for base-size models over many epochs), no flip (a mirrored digit is another shape)."""
    settings = dict(model=f"testbed:{arch}", dataset="csv", root=str(clips / "train"), val_root=str(clips / "val"),
                    annotations=str(clips / "train" / "digits.txt"),
                    val_annotations=str(clips / "val" / "digits.txt"), out=str(out), heads="class:10", epochs=3,
                    batch_size=8, optimizer="sgd", lr=0.05, warmup_epochs=0.0, flip="off", workers=0,
                    progress=False)
    return FinetuneConfig(**{**settings, **options})


def _weights(directory: Path) -> dict:
    return safetensors.torch.load_file(str(directory / "model.safetensors"))


@pytest.mark.parametrize("arch", ["videomae", "vivit", "timesformer", "motionformer"])
def test_a_new_head_learns_the_digits(arch: str, clips: Path, tmp_path: Path) -> None:
    result = finetune(_config(clips, tmp_path / "out", arch))
    epochs = result["epochs"]
    assert [epoch["epoch"] for epoch in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < 0.8 * epochs[0]["train_loss"]
    assert max(epoch["val"]["class_top1"] for epoch in epochs) >= 0.4  # chance: 0.1 (7 of 16 by luck: p < 0.001)
    assert all(epoch["val"]["clips"] == VAL_CLIPS and epoch["skipped_videos"] == 0 for epoch in epochs)
    logged = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [line for line in logged if line["type"] == "epoch"] == epochs
    assert (tmp_path / "out" / "curve.png").stat().st_size > 1000
    config = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert len(config["id2label"]) == 10 and "heads" not in config["videotome"]


class Stop(TrainerCallback):
    """Kill the run (an exception, as a crash would) right after the checkpoint of ``step`` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"stopped at step {self.step}")


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(clips: Path, tmp_path: Path) -> None:
    whole = finetune(_config(clips, tmp_path / "whole", epochs=2))
    with pytest.raises(KeyboardInterrupt):
        finetune(_config(clips, tmp_path / "cut", epochs=2, save_steps=1, keep_checkpoints=1), callbacks=(Stop(6),))
    assert not (tmp_path / "cut" / "final").exists()
    assert [path.name for path in (tmp_path / "cut" / "checkpoints").iterdir()] == ["checkpoint-6"]  # rotated
    resumed = finetune(_config(clips, tmp_path / "cut", epochs=2, save_steps=1, keep_checkpoints=1, resume=True))
    expected, got = _weights(tmp_path / "whole" / "final"), _weights(tmp_path / "cut" / "final")
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)
    strip = lambda epochs: [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]  # noqa: E731
    assert strip(resumed["epochs"]) == strip(whole["epochs"])


def test_torchrun_with_two_processes_trains_as_one_with_the_same_global_batch(clips: Path, tmp_path: Path) -> None:
    """Two gloo processes with a global batch of 8 (4 each) follow the same loss curve as one process with batch 8:
    the same clips in the same steps (accelerate shards each global batch), gradients averaged over the processes.
    Equal to float tolerance, not bit for bit: the two halves' gradients are summed in another order."""
    config = _config(clips, tmp_path / "two", epochs=2)
    argv = ["finetune", "--model", config.model, "--dataset", "csv", "--root", config.root, "--val-root",
            config.val_root, "--annotations", config.annotations, "--val-annotations", config.val_annotations,
            "--out", config.out, "--heads", "class:10", "--epochs", "2", "--batch-size", "8", "--optimizer", "sgd",
            "--lr", "0.05", "--warmup-epochs", "0", "--flip", "off", "--workers", "0", "--no-progress",
            "--threads", "1"]
    result = subprocess.run([*TORCHRUN, "-m", "videotome", *argv], capture_output=True, text=True, timeout=400,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("epoch 2:") == 1  # rank 0 alone reports
    one = finetune(_config(clips, tmp_path / "one", epochs=2))
    logs = {name: [json.loads(line) for line in (tmp_path / name / "log.jsonl").read_text().splitlines()]
            for name in ("one", "two")}
    steps = {name: [entry["loss"] for entry in lines if entry["type"] == "step" and "loss" in entry]
             for name, lines in logs.items()}
    assert len(steps["two"]) == len(steps["one"]) == 2 * TRAIN_CLIPS // 8
    assert steps["two"] == pytest.approx(steps["one"], rel=1e-4)
    epochs = [entry for entry in logs["two"] if entry["type"] == "epoch"]
    assert [entry["val"]["class_top1"] for entry in epochs] == [e["val"]["class_top1"] for e in one["epochs"]]
    assert all(entry["val"]["clips"] == VAL_CLIPS for entry in epochs)
    expected, got = _weights(tmp_path / "one" / "final"), _weights(tmp_path / "two" / "final")
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-4, atol=1e-5)


def _epic(clips: Path, root: Path) -> tuple[Path, Path]:
    """The testbed clips as EPIC-KITCHENS-100 segments (one video each, the whole 2 s), the verb and noun class
    lists beside the annotations, and one training video that is not a video."""
    files = []
    for split in ("train", "val"):
        described = json.loads((clips / split / "clips.json").read_text())["clips"]
        (root / "P01").mkdir(parents=True, exist_ok=True)
        rows = []
        for index, clip in enumerate(described):
            video = f"P01_{split}{index:03d}"
            (root / "P01" / f"{video}.MP4").symlink_to(clips / split / clip["path"])
            rows.append([f"{video}_0", "P01", video, "00:00:00.00", "00:00:00.00", "00:00:02.00", clip["verb"],
                         clip["noun"]])
        if split == "train":
            (root / "P01" / "P01_broken.MP4").write_bytes(b"not a video")
            rows.append(["P01_broken_0", "P01", "P01_broken", "00:00:00.00", "00:00:00.00", "00:00:02.00", 0, 0])
        path = root / f"EPIC_100_{split}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp",
                             "stop_timestamp", "verb_class", "noun_class"])
            writer.writerows(rows)
        files.append(path)
    for head, names in (("verb", VERBS), ("noun", NOUNS)):
        (root / f"EPIC_100_{head}_classes.csv").write_text(
            "id,key,instances,category\n" + "".join(f"{i},{name},[],x\n" for i, name in enumerate(names)))
    return files[0], files[1]


def test_new_epic_heads_are_read_back_by_eval_with_their_names(clips: Path, tmp_path: Path, capsys) -> None:
    model = tiny_model("videomae")  # a 5-class single-head model: the label space changes
    model.save_pretrained(tmp_path / "k400")
    train, val = _epic(clips, tmp_path / "epic")
    config = FinetuneConfig(model=str(tmp_path / "k400"), dataset="epic100", root=str(tmp_path / "epic"),
                            annotations=str(train), val_annotations=str(val), out=str(tmp_path / "out"),
                            heads="verb:8,noun:10", epochs=1, batch_size=11, workers=0, progress=False,
                            merge=MergeSettings(r=2))
    result = finetune(config)
    assert result["epochs"][0]["skipped_videos"] == 1  # the broken video, replaced by the next clip
    final = json.loads((tmp_path / "out" / "final" / "config.json").read_text())
    assert final["videotome"]["heads"] == "verb:8,noun:10" and final["videotome"]["merge"]["r"] == 2
    assert final["id2label"]["0"] == "verb: left" and final["id2label"]["8"] == "noun: 0"
    capsys.readouterr()
    for merge, warned in ((MergeSettings(), True), (MergeSettings(r=2), False)):
        out = tmp_path / f"eval{merge.r}.jsonl"
        summary = evaluate(EvalConfig(model=str(tmp_path / "out" / "final"), dataset="epic100",
                                      annotations=str(val), root=str(tmp_path / "epic"), workers=0, progress=False,
                                      merge=merge), out=out)
        assert ("was fine-tuned with merging" in capsys.readouterr().err) == warned
        header = json.loads(out.read_text().splitlines()[0])
        assert header["class_names"] == {"verb": list(VERBS), "noun": list(NOUNS)}
        assert summary["metrics"]["clips"] == VAL_CLIPS and "action_top1" in summary["metrics"]
    # a plan file is checked by the settings it holds, not by the (default) flags beside it
    trained = videotome.patch(tiny_model("videomae"), r=2)
    for r, warned in ((2, False), (1, True)):
        plan_file = tmp_path / f"plan{r}.json"
        plan_file.write_text(json.dumps(videotome.patch(trained, r=r) and videotome.plan(trained).to_dict()))
        evaluate(EvalConfig(model=str(tmp_path / "out" / "final"), dataset="epic100", annotations=str(val),
                            root=str(tmp_path / "epic"), workers=0, progress=False, plan=str(plan_file)),
                 out=tmp_path / f"plan{r}.jsonl")
        assert ("was fine-tuned with merging" in capsys.readouterr().err) == warned


def _cli(capsys, *argv: str) -> str:
    assert main(["finetune", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("videotome finetune: error: ")
    return err


def _argv(clips: Path, out: Path, train: str = "digits.txt", val: str = "digits.txt", *more: str) -> list[str]:
    return ["--model", "testbed:videomae", "--dataset", "csv", "--root", str(clips / "train"), "--val-root",
            str(clips / "val"), "--annotations", str(clips / "train" / train), "--val-annotations",
            str(clips / "val" / val), "--out", str(out), "--workers", "0", *more]


def test_bad_inputs_get_one_line_before_training(clips: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (clips / "train" / "bad.txt").write_text("videos/train-00000.mp4 1\nvideos/train-00001.mp4 one\n")
    assert "bad.txt:2: expected" in _cli(capsys, *_argv(clips, out, "bad.txt"))
    assert "digits.txt:line 3: sample videos/train-00002.mp4: class label 5 is outside the model's 5 classes" in _cli(capsys, *_argv(clips, out, "digits.txt", "digits.txt",
                                                                          "--heads", "class:5"))
    assert "--recipe vivit is for vivit models" in _cli(capsys, *_argv(clips, out, "digits.txt", "digits.txt",
                                                                     "--recipe", "vivit"))
    same = [*_argv(clips, out), "--val-root", str(clips / "train")]
    same[same.index("--val-annotations") + 1] = str(clips / "train" / "digits.txt")
    assert "are the same file" in _cli(capsys, *same)
    assert "the global batch 6 does not split over 1 processes x 4 accumulation steps" in _cli(
        capsys, *_argv(clips, out, "digits.txt", "digits.txt", "--batch-size", "6", "--grad-accum", "4",
                       "--heads", "class:10"))
    assert "--resume" in _cli(capsys, *_argv(clips, out, "digits.txt", "digits.txt", "--heads", "class:10",
                                             "--resume"))
    assert "heads ['class'] but the model's are verb:8,noun:10; pass --heads" in _cli(capsys, *_argv(clips, out))
    assert not out.exists()  # nothing was written


def test_a_forced_recipe_of_another_family_is_a_warning(capsys) -> None:
    config = FinetuneConfig(model="m", dataset="csv", root=".", annotations="a", val_annotations="b", out="o",
                            recipe="vivit", force_recipe=True, lr=0.5)
    recipe = config.recipe_for("videomae")
    assert recipe.optimizer == "sgd" and recipe.lr == 0.5 and recipe.batch_size == 64  # vivit's, lr overridden
    assert "warning: --recipe vivit is for vivit models" in capsys.readouterr().err


def test_the_recipes_schedules() -> None:
    timesformer, videomae, vivit = RECIPES["timesformer"], RECIPES["videomae"], RECIPES["vivit"]
    assert [timesformer.lr_factor(e) for e in (0, 10.99, 11, 13.5, 14, 14.9)] == [1, 1, 0.1, 0.1, 0.01, 0.01]
    assert [videomae.lr_factor(e) for e in (0, 2.5, 5)] == [0, 0.5, 1] and videomae.lr_factor(50) == 0
    assert vivit.lr_factor(1.25) == 0.5 and vivit.lr_factor(2.5 + 47.5 / 2) == pytest.approx(0.5)
    assert (timesformer.batch_size, videomae.batch_size, vivit.batch_size) == (128, 128, 64)
    assert (timesformer.epochs, videomae.epochs, vivit.epochs) == (15, 50, 50)


def test_a_random_temporal_offset_moves_the_view_inside_the_clip() -> None:
    dense, uniform = SamplingConfig(4, "dense", 2), SamplingConfig(4, "uniform")
    assert sample_indices(20, dense) == [6, 8, 10, 12]  # the centre: evaluation's view
    assert sample_indices(20, dense, 0.0) == [0, 2, 4, 6] and sample_indices(20, dense, 0.99) == [12, 14, 16, 18]
    assert sample_indices(20, uniform) == [2, 7, 12, 17] and sample_indices(20, uniform, 0.0) == [0, 5, 10, 15]


def test_the_readme_recipe_table_is_the_recipes() -> None:
    """The README's recipe table states each preset's batch, lr, epochs and weight decay as RECIPES holds them."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = {cells[0]: cells for line in readme.splitlines() if line.startswith("| ")
            for cells in [[cell.strip() for cell in line.strip("|").split("|")]] if cells[0] in RECIPES}
    assert rows.keys() == RECIPES.keys()
    for name, recipe in RECIPES.items():
        _, batch, optimizer, lr, _, epochs, decay, _ = rows[name]
        assert (int(batch), float(lr), int(epochs), float(decay)) == (
            recipe.batch_size, recipe.lr, recipe.epochs, recipe.weight_decay)
        assert optimizer.lower().startswith(recipe.optimizer) and f"{recipe.momentum}" in optimizer
