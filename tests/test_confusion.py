"""``videotome confusion`` on results files written here line by line (in the real format), and the saved-logits
shards (writing, pruning on resume, reading)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from videotome.cli import main
from videotome.evaluation.confusion import confusion_difference
from videotome.evaluation.datasets import head_class_names
from videotome.evaluation.harness import make_header
from videotome.evaluation.logits import LogitsWriter, logits_path, read_logits
from videotome.evaluation.results import ResultsError, ResultsWriter, read_runs

NAMES = ["a", "b", "c", "d"]
LABELS = [0, 0, 0, 1, 1, 2, 0, 1]
UNMERGED = [0, 0, 1, 1, 1, 2, 0, 1]
MERGED = [0, 1, 1, 0, 3, 2, 0, None]  # None: the clip failed


def _settings(r: int, dataset: str = "csv") -> dict:
    return {"model": "/ckpt/tiny", "model_type": "videomae", "dataset": dataset, "annotations": "/data/list.txt",
            "merge": {"r": r}}


def _write(path: Path, predictions: list[int | None], *, r: int = 0, dataset: str = "csv", head: str = "class",
           ids: list[str] | None = None) -> str:
    """A results file of one run: a header from ``make_header``, one clip line per prediction, through
    ``ResultsWriter``; returns the run id."""
    header = make_header(_settings(r, dataset), batch_size=2, workers=0, device=torch.device("cpu"),
                         class_names={head: NAMES})
    ids = ids or [f"clip{n}" for n in range(len(predictions))]
    with ResultsWriter(path, header, resume=True, new_runs=True) as writer:
        lines = []
        for clip, label, predicted in zip(ids, LABELS, predictions):
            line = {"type": "clip", "run": header["run"], "id": clip, "labels": {head: label},
                    "settings": {"merge": {"r": r}}, "error": None if predicted is not None else "missing video"}
            ranked = [predicted] + [c for c in range(4) if c != predicted] if predicted is not None else None
            line["top5"] = {head: [[c, 0.1] for c in ranked]} if ranked else None
            lines.append(line)
        writer.write(lines)
    return header["run"]


def test_the_difference_of_a_run_with_itself_is_zero(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path / "u.jsonl", UNMERGED)
    assert main(["confusion", str(tmp_path / "u.jsonl"), str(tmp_path / "u.jsonl"), "--out", str(tmp_path / "o")]) == 0
    rows = list(csv.reader((tmp_path / "o" / "confusion_diff.csv").open()))
    assert rows[0] == ["true \\ predicted", "a", "b", "c", "other"]
    assert all(value == "0" for row in rows[1:] for value in row[1:]) and len(rows) == 4
    assert "no confusion grew" in capsys.readouterr().out


def test_a_hand_made_pair_gives_the_hand_computed_matrix(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write(tmp_path / "u.jsonl", UNMERGED)
    _write(tmp_path / "m.jsonl", MERGED, r=2)
    out = tmp_path / "out"
    argv = ["confusion", str(tmp_path / "u.jsonl"), str(tmp_path / "m.jsonl"), "--top", "2", "--out", str(out)]
    assert main(argv) == 0
    # rows: class a (4 clips: 0, 1, 2, 6) and b (3, 4; clip 7 failed in the merged run); class c is not in the top 2
    assert list(csv.reader((out / "confusion_diff.csv").open())) == [
        ["true \\ predicted", "a", "b", "other"], ["a", "-1", "1", "0"], ["b", "1", "-2", "1"]]
    printed = capsys.readouterr().out.splitlines()
    assert printed[1:4] == ["a -> b: +1", "b -> a: +1", "b -> other: +1"]
    assert "(6 clips; 2 left out" in printed[0]
    assert (out / "confusion_diff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    unmerged, merged = (read_runs(tmp_path / name)[0] for name in ("u.jsonl", "m.jsonl"))
    result = confusion_difference(unmerged, merged, top=2)
    assert result.unmerged == [[3, 1, 0], [0, 2, 0]] and result.merged == [[2, 2, 0], [1, 0, 1]]


def _error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videotome confusion: error: ")
    return lines[0]


def test_bad_inputs_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    unmerged = str(tmp_path / "u.jsonl")
    _write(tmp_path / "u.jsonl", UNMERGED)
    _write(tmp_path / "ssv2.jsonl", MERGED, dataset="ssv2")
    _write(tmp_path / "fewer.jsonl", MERGED[:5])
    _write(tmp_path / "renamed.jsonl", MERGED, ids=[f"clip{n}" for n in range(6)] + ["x", "y"])
    _write(tmp_path / "verb.jsonl", MERGED, head="verb")
    first = _write(tmp_path / "two.jsonl", UNMERGED)
    second = _write(tmp_path / "two.jsonl", MERGED, r=2)
    assert "results file not found: " in _error(["confusion", unmerged, str(tmp_path / "none.jsonl")], capsys)
    assert "different datasets: csv" in _error(["confusion", unmerged, str(tmp_path / "ssv2.jsonl")], capsys)
    message = _error(["confusion", unmerged, str(tmp_path / "fewer.jsonl")], capsys)
    assert "different clips (8 in" in message and "5 in" in message and "3 only in" in message and "clip5" in message
    message = _error(["confusion", unmerged, str(tmp_path / "renamed.jsonl")], capsys)
    assert "2 only in" in message and "clip6, clip7" in message and "x, y" in message
    message = _error(["confusion", unmerged, unmerged, "--head", "noun"], capsys)
    assert "head 'noun' is not a head of both runs" in message
    assert "share no head" in _error(["confusion", unmerged, str(tmp_path / "verb.jsonl")], capsys)
    message = _error(["confusion", unmerged, str(tmp_path / "two.jsonl")], capsys)
    assert f"holds 2 runs ({first} (tiny r=0), {second} (tiny r=2)): choose one with --merged-run ID" in message
    assert "has no run nope" in _error(["confusion", unmerged, str(tmp_path / "two.jsonl"), "--merged-run",
                                        "nope"], capsys)
    argv = ["confusion", str(tmp_path / "two.jsonl"), str(tmp_path / "two.jsonl"), "--unmerged-run", first,
            "--merged-run", second, "--top", "2", "--out", str(tmp_path / "o")]
    assert main(argv) == 0 and "a -> b: +1" in capsys.readouterr().out


def _batch(clips: list[str], seed: int) -> dict[str, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {clip: {"verb": torch.randn(3, generator=generator), "noun": torch.randn(4, generator=generator)}
            for clip in clips}


def test_logits_shards_round_trip_and_resume_keeps_one_entry_per_clip(tmp_path: Path) -> None:
    results = tmp_path / "run.jsonl"
    assert logits_path(results) == tmp_path / "run.logits"
    writer = LogitsWriter(results, "abc", {})
    first, second = _batch(["v/a", "v/b"], 0), _batch(["v/c", "v/d"], 1)
    writer.write(first)
    writer.write(second)  # as if killed here: the results file has lines for a, b and c only
    (logits_path(results) / "abc" / "00002.safetensors.tmp").write_bytes(b"torn")
    done = {clip: {"error": None} for clip in ("v/a", "v/b", "v/c")}
    resumed = LogitsWriter(results, "abc", done)
    resumed.write(_batch(["v/d"], 2))
    found = read_logits(results)
    assert sorted(found) == ["v/a", "v/b", "v/c", "v/d"]
    assert torch.equal(found["v/c"]["noun"], second["v/c"]["noun"]) and found["v/a"]["verb"].dtype == torch.float32
    assert torch.equal(found["v/d"]["verb"], _batch(["v/d"], 2)["v/d"]["verb"])
    keys = [key for shard in sorted((logits_path(results) / "abc").iterdir()) for key in load_file(shard)]
    assert sorted(keys) == sorted(f"{head}/v/{c}" for head in ("verb", "noun") for c in "abcd")  # one entry each


def test_logits_of_several_runs_and_missing_logits_are_refused(tmp_path: Path) -> None:
    results = tmp_path / "sweep.jsonl"
    with pytest.raises(ResultsError, match="no logits beside .*--save-logits"):
        read_logits(results)
    LogitsWriter(results, "run1", {}).write(_batch(["a"], 0))
    LogitsWriter(results, "run2", {}).write(_batch(["b"], 1))
    with pytest.raises(ResultsError, match=r"logits of 2 runs \(run1, run2\)"):
        read_logits(results)
    assert list(read_logits(results, run="run2")) == ["b"]
    with pytest.raises(ResultsError, match="no logits of run run3"):
        read_logits(results, run="run3")
    with pytest.raises(ResultsError, match="1 clips of run run1 .* without --save-logits"):
        LogitsWriter(results, "run1", {"a": {"error": None}, "z": {"error": None}})


def test_class_names_per_head_come_from_what_the_run_reads(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text('{"Pushing something": "1", "Holding something": "0"}')
    assert head_class_names("ssv2", tmp_path / "validation.json", {"class": 2}) == {
        "class": ["Holding something", "Pushing something"]}
    (tmp_path / "EPIC_100_verb_classes.csv").write_text("id,key,instances,category\n0,take,[],x\n1,put,[],x\n")
    id2label = {0: "verb: a", 1: "verb: b", 2: "noun: tap", 3: "noun: pan", 4: "noun: cup"}
    assert head_class_names("epic100", tmp_path / "EPIC_100_validation.csv", {"verb": 2, "noun": 3}, id2label) == {
        "verb": ["take", "put"], "noun": ["tap", "pan", "cup"]}  # the verb list beside the annotations, else id2label
    (tmp_path / "classes.txt").write_text("Abseiling\n\nair drumming\n")
    assert head_class_names("k400", tmp_path / "k.csv", {"class": 2}, {0: "x", 1: "y"}, tmp_path / "classes.txt") == {
        "class": ["Abseiling", "air drumming"]}
    assert head_class_names("csv", tmp_path / "list.txt", {"class": 2}, {0: "LABEL_0", 1: "LABEL_1"}) == {}
    assert head_class_names("csv", tmp_path / "list.txt", {"verb": 2, "noun": 2}, {0: "a", 1: "b"}) == {}
