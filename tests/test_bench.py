"""The bench command on a tiny checkpoint saved by the test: its JSON line and its figures' consistency."""

import copy
import json

import pytest
import torch
from conftest import benchmark_script, tiny_input, tiny_model
from transformers import Dinov2Config, Dinov2Model

from videotome import patch
from videotome.adapters import find_adapter
from videotome.adapters.base import TokenState
from videotome.bench import BenchConfig, bench_model, example_input, run_bench, zero_cost_ideal
import videotome
from videotome.cli import main
from videotome.measure import seconds_in_steps
from videotome.merge import timed_steps
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


@pytest.mark.parametrize("family", ["videomae", "vivit"])
def test_zero_cost_ideal_is_the_model_on_its_first_tokens(family):
    """Joint models: the MLP acts token by token, so slicing before it (the ideal) equals slicing the model's own
    block output; sizes stay 1, so proportional attention adds nothing. The original model stays unpatched."""
    model, pixel_values = tiny_model(family), tiny_input(family)
    ideal = zero_cost_ideal(model, MergeSettings(3))
    assert not hasattr(model, "_videotome")
    adapter = find_adapter(model)
    with torch.no_grad():
        x = adapter.embed(model, pixel_values)
        for layer in adapter.layers(model):
            x = adapter.run_original(layer, x)[:, : x.shape[1] - 3]
        expected = adapter.finish(model, TokenState(x), None)
        got = ideal(pixel_values=pixel_values)
    name = "logits" if "logits" in got else "last_hidden_state"
    torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-5)


def test_zero_cost_ideal_has_the_merged_token_counts(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    settings = MergeSettings(2, schedule="decreasing")
    merged = patch(copy.copy(model), settings)
    ideal = zero_cost_ideal(model, settings)
    with torch.no_grad():
        counts = [[h.shape for h in m(pixel_values=pixel_values, output_hidden_states=True).hidden_states]
                  for m in (merged, ideal)]
    assert counts[0] == counts[1] and counts[0][-1] != counts[0][0]
    assert videotome.plan(ideal).r == videotome.plan(merged).r and videotome.plan(ideal).free_removal


def test_limit_benchmark_writes_each_result_as_measured(tmp_path, monkeypatch):
    """benchmarks/limit.py on one testbed model at batch 1: its JSONL line and the figures' consistency."""
    import statistics

    limit = benchmark_script("limit", monkeypatch)

    out = tmp_path / "limit.jsonl"
    limit.main(["--models", "videomae", "--batches", "1", "--repeats", "3", "--warmup", "0", "--jsonl", str(out)])
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert (line["model"], line["batch_size"], line["mode"], line["threads"]) == ("videomae", 1, "eager",
                                                                                  torch.get_num_threads())
    rounds, seconds = line["rounds"], line["seconds"]
    assert all(len(rounds[name]) == 3 and seconds[name] == statistics.median(rounds[name]) for name in rounds)
    assert line["speedup"] == pytest.approx(seconds["unmerged"] / seconds["merged"])
    assert line["ideal_speedup"] == pytest.approx(seconds["unmerged"] / seconds["ideal"])
    per_round = sorted(i / m for i, m in zip(rounds["ideal"], rounds["merged"]))
    assert line["merged_over_ideal"] == pytest.approx(per_round[1])
    assert line["merged_over_ideal_iqr"][0] <= per_round[1] <= line["merged_over_ideal_iqr"][1]
    assert 0 < line["merge_share"] < 1 and line["compile_s"] is None


def test_merge_step_benchmark_counts_operations_and_writes_each_shape(tmp_path, monkeypatch):
    """benchmarks/merge_step.py on two small shapes: one JSONL line each, with the step's parts and its op count."""
    merge_step = benchmark_script("merge_step", monkeypatch)

    x = torch.ones(2, 3)
    assert merge_step.operations(lambda: x + x) == 1 and merge_step.operations(lambda: (x + x).sum()) == 2
    monkeypatch.setattr(merge_step, "SHAPES", [("one", 1, 16, 8, 4, 3, True), ("two", 2, 16, 8, 4, 3, False)])
    out = tmp_path / "steps.jsonl"
    merge_step.main(["--repeats", "1", "--jsonl", str(out)])
    lines = [json.loads(text) for text in out.read_text().splitlines()]
    assert [line["shape"] for line in lines] == ["one", "two"]
    assert all(line[key] > 0 for line in lines for key in ("step", "matching", "merging", "floor", "operations"))


def test_timed_steps_clocks_each_reduction_step_and_nothing_outside(family):
    """One entry per layer that removes tokens, inside the block only; an unmerged model's forward adds none."""
    model = tiny_model(family).eval()
    pixel_values = tiny_input(family)
    with torch.inference_mode():
        with timed_steps() as unmerged:
            model(pixel_values)
        patch(model, 2)
        reducing = sum(step.effective_r > 0 for step in videotome.plan(model).steps())
        with timed_steps() as merged:
            model(pixel_values)
        model(pixel_values)  # after the block: collected nowhere
        inside, total = seconds_in_steps(lambda: model(pixel_values))
    assert unmerged == [] and reducing > 0
    assert len(merged) == reducing and all(seconds > 0 for seconds in merged)
    assert 0 < inside < total
