"""``videotome vlm bench`` on a tiny model: its rows follow the plan and the analytic count; bad input, one line."""

from __future__ import annotations

import json

import pytest
from conftest import write_video

from videotome.cli import main
from videotome.vlm import budget
from videotome.vlm.cost import LanguageModelShape
from videotome.vlm.tiny import tiny_model


def test_bench_rows_follow_the_budget_and_the_count(capsys) -> None:
    code = main(["vlm", "bench", "--model", "tiny-qwen2.5-vl", "--frames", "4", "--keep", "0.5", "0.25",
                 "--repeats", "1", "--warmup", "0", "--json", "--threads", "1"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [row["keep"] for row in rows] == [1.0, 0.5, 0.25]
    # tiny Qwen2.5-VL at 56 px: 4 x 4 patches merged 2 x 2, 2 frames a step: 2 steps of 4 tokens
    assert [row["visual_tokens"] for row in rows] == [budget(4, 2, keep) for keep in (1.0, 0.5, 0.25)]
    removed = [rows[0]["visual_tokens"] - row["visual_tokens"] for row in rows]
    assert [rows[0]["sequence"] - row["sequence"] for row in rows] == removed
    shape = LanguageModelShape.of(tiny_model("tiny-qwen2.5-vl").config)
    for row in rows:
        assert row["gflops"] == pytest.approx(shape.prefill_flops(row["sequence"]) / 1e9)
        assert row["kv_cache_kib"] == pytest.approx(shape.kv_cache_bytes(row["sequence"], 4) / 1024)
        assert row["prefill_ms"] > 0 and row["first_token_ms"] > 0
    assert rows[0]["prefill_speedup"] == rows[0]["first_token_speedup"] == 1.0
    assert {row["model"] for row in result["analytic_7b"]} == {"LLaVA-OneVision-7B", "Qwen2.5-VL-7B (448 px)"}
    assert [row["tokens"] for row in result["analytic_7b"][:3]] == [4 * 196 + 1 + 64, 392 + 1 + 64, 196 + 1 + 64]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "/nonexistent/model"], "--model '/nonexistent/model' is neither a directory with a config.json"),
        (["--model", "tiny-qwen2.5-vl", "--frames", "0"], "frames=0 must be at least 1"),
    ],
)
def test_bad_input_is_one_line(capsys, argv, message) -> None:
    assert main(["vlm", "bench", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_keep_outside_the_range_is_refused_by_the_parser(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["vlm", "bench", "--model", "tiny-qwen2.5-vl", "--keep", "1.5"])
    assert exit_info.value.code == 2
    assert "keep=1.5 must be a share of the visual tokens in (0, 1]" in capsys.readouterr().err


class _Processor:
    """A stand-in for a real processor (no tokenizer is reachable offline): the tiny model's inputs for any video."""

    def __init__(self, model) -> None:
        self.model, self.videos = model, []

    def apply_chat_template(self, messages, add_generation_prompt: bool) -> str:
        return messages[0]["content"][1]["text"]

    def __call__(self, text, videos, return_tensors):
        from transformers import BatchFeature

        from videotome.vlm.tiny import video_inputs

        self.videos.append(videos[0])
        return BatchFeature(video_inputs(self.model, frames=4))

    def batch_decode(self, ids, skip_special_tokens: bool) -> list[str]:
        return [" ".join(map(str, row.tolist())) for row in ids]


def test_generate_answers_with_and_without_the_reduction(tmp_path, monkeypatch, capsys) -> None:
    from transformers import AutoProcessor

    model = tiny_model("tiny-llava-onevision")
    model.save_pretrained(tmp_path / "model")
    processor = _Processor(model)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *args, **kwargs: processor)
    write_video(tmp_path / "clip.mp4", frames=8, size=64, fps=8)
    code = main(["vlm", "generate", "--model", str(tmp_path / "model"), "--video", str(tmp_path / "clip.mp4"),
                 "--prompt", "what happens?", "--keep", "1", "--frames", "4", "--max-new-tokens", "3"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    # four decoded frames reached the processor; keep=1 answers exactly as the unreduced model
    assert len(processor.videos[0]) == 4 and processor.videos[0][0].shape[-1] == 3
    assert out[0].startswith("unreduced:") and out[2].startswith("reduced:") and out[1] == out[3]
    assert "3 tokens" in out[0] and "visual tokens" in "\n".join(out[4:])


def test_generate_refuses_a_missing_video_in_one_line(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert main(["vlm", "generate", "--model", str(tmp_path), "--video", str(tmp_path / "none.mp4"),
                 "--prompt", "q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing video" in err and len(err.splitlines()) == 1
