"""The bench command on a tiny checkpoint saved by the test: its JSON line and its figures' consistency."""

import json

import pytest
from conftest import tiny_model
from transformers import Dinov2Config, Dinov2Model

from videotome import patch
from videotome.bench import BenchConfig, bench_model, example_input, run_bench
import videotome
from videotome.cli import main
from videotome.plan import MergeSettings

KEYS = {
    "model", "merge", "batch_size", "baseline_clips_per_s", "merged_clips_per_s", "speedup",
    "flops_ratio", "baseline_gflops", "merged_gflops", "merge_time_fraction", "tokens_per_layer",
}


def _bench(tmp_path, capsys, family: str, r: int) -> dict:
    """The JSON line of ``videotome bench`` on the family's tiny model saved to ``tmp_path``."""
    tiny_model(family).save_pretrained(tmp_path)
    assert main(["bench", "--model", str(tmp_path), "--r", str(r), "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["speedup"] == pytest.approx(result["merged_clips_per_s"] / result["baseline_clips_per_s"])
    assert result["flops_ratio"] == pytest.approx(result["baseline_gflops"] / result["merged_gflops"])
    return result


@pytest.mark.parametrize(
    ("family", "tokens"),
    [
        ("videomae", [32, 29, 26, 23]),  # 2 x 16 patches, 3 fewer per layer
        ("timesformer", [65, 53, 41, 29]),  # class token + 4 frames x 16 patches, 3 fewer per frame and layer
        ("motionformer", [65, 53, 41, 29]),
    ],
)
def test_bench_json_on_a_local_checkpoint(tmp_path, capsys, family, tokens):
    result = _bench(tmp_path, capsys, family, 3)
    steps = videotome.plan(videotome.patch(tiny_model(family), 3)).steps()
    assert result["tokens_per_layer"] == tokens == [steps[0].tokens_in] + [s.tokens_out for s in steps]
    assert result["flops_ratio"] > 1 and result["merged_gflops"] < result["baseline_gflops"]
    assert 0 < result["merge_time_fraction"] < 1


def test_bench_without_merging_changes_nothing(tmp_path, capsys):
    result = _bench(tmp_path, capsys, "videomae", 0)
    assert result["tokens_per_layer"] == [32] * 4
    assert result["merged_gflops"] == result["baseline_gflops"] and result["flops_ratio"] == 1
    assert result["merge_time_fraction"] == 0


def test_bench_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="'no-such-model' is neither a built-in name"):
        bench_model("no-such-model")


def test_bench_times_a_dinov2_directory_at_its_configured_image_size(tmp_path, one_thread):
    config = Dinov2Config(image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    Dinov2Model(config).save_pretrained(tmp_path)
    result = run_bench(BenchConfig(str(tmp_path), MergeSettings(0.25), repeats=1, warmup=0), progress=False)
    assert result.tokens_per_layer[0] == (64 // 8) ** 2 + 1
    model = patch(bench_model(str(tmp_path)), 0.25)
    pixel_values, _ = example_input(model, 1)
    assert model(pixel_values=pixel_values).last_hidden_state.shape[1] == result.tokens_per_layer[-1]
