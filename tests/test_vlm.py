"""Video-LLMs patched with videotome: the six supported transformers classes, on tiny random configurations."""

from __future__ import annotations

import warnings

import pytest
import torch

import videotome
from videotome.vlm import VideoMergeSettings
from videotome.vlm.models import ATTENTION, LOG_SIZE_KEY, log_size_attention, prepare, text_config
from videotome.vlm.reduce import budget
from videotome.vlm.tiny import TINY_MODELS, VIDEO, tiny_model, video_inputs

pytestmark = pytest.mark.usefixtures("one_thread")
QWEN = [name for name in TINY_MODELS if "qwen" in name]


@pytest.fixture(scope="module", params=sorted(TINY_MODELS))
def model_name(request) -> str:
    return request.param


def _fresh(name: str) -> tuple[torch.nn.Module, dict]:
    model = tiny_model(name)
    return model, video_inputs(model, batch=2, prompt_lengths=[4, 2])


def _generate(model: torch.nn.Module, inputs: dict, **options) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(**inputs, max_new_tokens=4, do_sample=False, **options)


def _outputs(model: torch.nn.Module, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward logits and the greedy generation of ``inputs``."""
    with torch.no_grad():
        return model(**inputs).logits, _generate(model, inputs)


def test_keep_one_is_the_unpatched_model_bit_for_bit(model_name: str) -> None:
    model, inputs = _fresh(model_name)
    logits, generated = _outputs(model, inputs)
    videotome.patch(model, keep=1.0)
    patched_logits, patched_generated = _outputs(model, inputs)
    assert torch.equal(patched_logits, logits) and torch.equal(patched_generated, generated)


def test_merged_runs_see_fewer_tokens_generate_keeps_the_prompt_and_unpatch_restores(model_name: str) -> None:
    model, inputs = _fresh(model_name)
    logits, generated = _outputs(model, inputs)
    videotome.patch(model, keep=0.25)
    with torch.no_grad():
        merged = model(**inputs).logits
    plan = videotome.plan(model)
    placeholders = int((inputs["input_ids"][0] == VIDEO).sum())
    removed = []
    for frames, rows, cols, kept in plan.videos:
        assert kept == budget(rows * cols, frames, 0.25)
        removed.append(frames * rows * cols - kept)
    assert merged.shape[1] == logits.shape[1] - removed[0] and placeholders >= plan.videos[0][0] * plan.videos[0][1]
    cached = _generate(model, inputs)
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(cached[:, :prompt], inputs["input_ids"]) and cached.shape[1] == prompt + 4
    assert torch.equal(cached, _generate(model, inputs, use_cache=False))  # the cache changes nothing
    sources = videotome.sources(model)
    grids = videotome.token_grid(model)
    assert [s.shape for s in sources] == [(kept, f * r * c) for f, r, c, kept in plan.videos]
    assert all(s.sum(0).eq(1).all() for s in sources)  # merge: every visual token in exactly one kept token
    assert all(g.shape == (s.shape[1], 3) for g, s in zip(grids, sources))
    videotome.unpatch(model)
    restored_logits, restored_generated = _outputs(model, inputs)
    assert torch.equal(restored_logits, logits) and torch.equal(restored_generated, generated)
    assert text_config(model)._attn_implementation == "sdpa" and "forward" not in vars(model)


def test_a_batch_with_left_padding_equals_each_video_alone(model_name: str) -> None:
    model, inputs = _fresh(model_name)
    videotome.patch(model, keep=0.5)
    together = _generate(model, inputs)
    with torch.no_grad():
        batch_logits = model(**inputs).logits
    for row in range(2):
        alone = _single(model, inputs, row)
        pad = int((inputs["attention_mask"][row] == 0).sum())
        assert torch.equal(_generate(model, alone)[0], together[row, pad:])
        with torch.no_grad():
            logits = model(**alone).logits[0]
        torch.testing.assert_close(batch_logits[row, -1], logits[-1], rtol=1e-4, atol=1e-5)


def _single(model: torch.nn.Module, inputs: dict, row: int) -> dict:
    """One sample of a batch as the processor would make it alone (no padding)."""
    valid = inputs["attention_mask"][row].bool()
    alone = {key: inputs[key][row, valid][None] for key in ("input_ids", "attention_mask")}
    if "video_grid_thw" in inputs:
        patches = int(inputs["video_grid_thw"][row].prod())
        alone["pixel_values_videos"] = inputs["pixel_values_videos"][row * patches:(row + 1) * patches]
        alone["video_grid_thw"] = inputs["video_grid_thw"][row:row + 1]
        alone["mm_token_type_ids"] = inputs["mm_token_type_ids"][row, valid][None]
        if "second_per_grid_ts" in inputs:
            alone["second_per_grid_ts"] = inputs["second_per_grid_ts"][row:row + 1]
    else:
        alone["pixel_values_videos"] = inputs["pixel_values_videos"][row:row + 1]
    return alone


@pytest.mark.parametrize("name", QWEN)
def test_qwen_positions_are_the_models_own_for_the_kept_tokens(name: str) -> None:
    model, inputs = _fresh(name)
    prepared = prepare(model, inputs, VideoMergeSettings(keep=0.25), generate=True)
    assert model.model.rope_deltas is None  # prepare leaves the model's own per-call state as it was
    own, _ = model.model.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                        video_grid_thw=inputs["video_grid_thw"],
                                        attention_mask=inputs["attention_mask"],
                                        **{k: inputs[k] for k in ("second_per_grid_ts",) if k in inputs})
    kept = prepared.kept.unsqueeze(0).expand(3, -1, -1)
    assert torch.equal(prepared.kwargs["position_ids"][-3:], own.gather(2, kept))
    with pytest.raises(ValueError, match="positions='compact' needs 1-D positions"):
        prepare(model, inputs, VideoMergeSettings(keep=0.25, positions="compact"))


def test_compact_positions_renumber_a_1d_family_without_gaps() -> None:
    model, inputs = _fresh("tiny-llava-onevision")
    prepared = prepare(model, inputs, VideoMergeSettings(keep=0.25, positions="compact"), generate=True)
    mask = prepared.kwargs["attention_mask"]
    assert torch.equal(prepared.kwargs["position_ids"], (mask.cumsum(-1) - 1).clamp(min=0))
    gapped = prepare(model, inputs, VideoMergeSettings(keep=0.25), generate=True).kwargs["position_ids"]
    assert gapped[0, -1] > prepared.kwargs["position_ids"][0, -1]  # destinations keep the full sequence's numbers


def test_proportional_attention_adds_log_sizes_and_is_exact_when_sizes_are_one() -> None:
    model, inputs = _fresh("tiny-qwen2.5-vl")
    with torch.no_grad():
        dropped = [videotome.patch(model, keep=0.25, strategy="drop", prop_attn=flag)(**inputs).logits
                   for flag in (True, False)]
        merged = [videotome.patch(model, keep=0.25, prop_attn=flag)(**inputs).logits for flag in (True, False)]
    assert torch.equal(*dropped)  # drop leaves every size at 1: nothing to add
    assert not torch.allclose(*merged)
    assert LOG_SIZE_KEY in prepare(model, inputs, VideoMergeSettings(keep=0.25), prop_attn=True).kwargs
    # the attention function against a hand computation: causal softmax of q k / sqrt(d) + log size of each key
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=generator) for _ in range(3))
    sizes = torch.tensor([[1.0, 3.0, 1.0, 2.0, 1.0], [2.0, 1.0, 1.0, 1.0, 4.0]])
    out, _ = log_size_attention(torch.nn.Module(), q, k, v, None, scaling=8 ** -0.5,
                                **{LOG_SIZE_KEY: sizes[:, :4].log()})
    logits = q @ k.transpose(-1, -2) * 8 ** -0.5 + torch.nn.functional.pad(sizes[:, :4].log(), (0, 1))[:, None, None]
    logits = logits.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(out, (logits.softmax(-1) @ v).transpose(1, 2))


def test_an_attention_without_a_float_bias_warns_and_runs_without_it() -> None:
    model, inputs = _fresh("tiny-llava-onevision")
    text_config(model)._attn_implementation = "eager"
    with pytest.warns(UserWarning, match="proportional attention needs the language model's attention"):
        videotome.patch(model, keep=0.5)
    assert text_config(model)._attn_implementation == "eager"
    with torch.no_grad():
        assert model(**inputs).logits.isfinite().all()
    videotome.patch(model, keep=0.5, prop_attn=False)  # asked off: no warning
    assert text_config(model)._attn_implementation != ATTENTION


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, i: videotome.patch(m, keep=0), ValueError,
         r"keep=0 must be a share of the visual tokens in \(0, 1\]"),
        (lambda m, i: videotome.patch(m, keep=1.5), ValueError, r"keep=1.5 must be"),
        (lambda m, i: videotome.patch(m, r=1.0), ValueError, r"r=1.0: on a video-LLM r is the share"),
        (lambda m, i: videotome.patch(m, keep=0.5, flops=0.5), ValueError, r"a video-LLM takes keep="),
        (lambda m, i: videotome.patch(torch.nn.Linear(2, 2), keep=0.5), TypeError, r"Linear is not supported"),
        (lambda m, i: prepare(m, {k: v for k, v in i.items() if k != "pixel_values_videos"}, VideoMergeSettings()),
         ValueError, r"the inputs hold no video \(no pixel_values_videos\)"),
        (lambda m, i: prepare(torch.nn.Linear(2, 2), i, VideoMergeSettings()), TypeError,
         r"Linear is not a supported video-LLM"),
    ],
)
def test_bad_input_gets_one_line(call, error: type, message: str) -> None:
    model, inputs = _fresh("tiny-llava-onevision")
    with pytest.raises(error, match=message) as caught:
        call(model, inputs)
    assert "\n" not in str(caught.value)


def test_prepare_takes_keep_as_a_keyword_and_leaves_the_model_as_it_is() -> None:
    model, inputs = _fresh("tiny-llava-onevision")
    prepared = videotome.vlm.prepare(model, inputs, keep=0.25, generate=True)
    assert prepared.kwargs["input_ids"].shape[1] < inputs["input_ids"].shape[1]
    assert "forward" not in vars(model) and "pixel_values_videos" not in prepared.kwargs
    out = _generate(model, prepared.kwargs)  # the unpatched model, driven by the caller
    assert torch.equal(out[:, :prepared.kwargs["input_ids"].shape[1]], prepared.kwargs["input_ids"])
    assert [video.reduction.size.numel() for video in prepared.videos] == [budget(4, 4, 0.25)] * 2


def test_qwen3_deepstack_features_are_reduced_over_the_same_groups() -> None:
    model, inputs = _fresh("tiny-qwen3-vl")
    with torch.no_grad():
        full = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                              video_grid_thw=inputs["video_grid_thw"], return_dict=True)
        prepared = prepare(model, inputs, keep=0.25)
    reduced = prepared.kwargs["mm_encoder_outputs"]["video"]
    assert len(reduced.deepstack_features) == len(full.deepstack_features) == 1
    for video, record in enumerate(prepared.videos):
        assignment = record.reduction.assignment
        layer = full.deepstack_features[0][video]
        expected = torch.stack([layer[assignment == k].mean(0) for k in range(record.reduction.size.numel())])
        torch.testing.assert_close(reduced.deepstack_features[0][video], expected)
        main = torch.stack([full.pooler_output[video][assignment == k].mean(0)
                            for k in range(record.reduction.size.numel())])
        torch.testing.assert_close(reduced.pooler_output[video], main)  # the features: size-weighted means too


@pytest.mark.parametrize("name", ["tiny-llava-onevision", "tiny-qwen2-vl"])
def test_positional_input_ids_are_reduced_like_keywords(name: str) -> None:
    model, inputs = _fresh(name)
    videotome.patch(model, keep=0.25)
    rest = {key: value for key, value in inputs.items() if key != "input_ids"}
    with torch.no_grad():
        assert torch.equal(model(inputs["input_ids"], **rest).logits, model(**inputs).logits)
    assert torch.equal(_generate(model, {"inputs": inputs["input_ids"], **rest}), _generate(model, inputs))
    with torch.no_grad(), pytest.raises(TypeError):
        model(inputs["input_ids"], **inputs)  # input_ids twice: Python's own error, as without the patch


@pytest.mark.parametrize(("strategy", "mode"), [(s, "joint") for s in videotome.vlm.VLM_STRATEGIES]
                         + [("merge", "per_frame")])
def test_every_strategy_and_mode_keeps_the_budget_through_the_model(strategy: str, mode: str) -> None:
    model, inputs = _fresh("tiny-llava-next-video")
    with torch.no_grad():
        first = videotome.patch(model, r=0.75, strategy=strategy, mode=mode)(**inputs).logits
        again = videotome.patch(model, keep=0.25, strategy=strategy, mode=mode)(**inputs).logits
    assert torch.equal(first, again)  # r is the share removed: the same setting; random strategies are seeded
    for frames, rows, cols, kept in videotome.plan(model).videos:
        assert kept == budget(rows * cols, frames, 0.25, mode)
    held = videotome.sources(model)[0].sum(0)
    assert held.eq(1).all() if "merge" in strategy else held.sum() == budget(4, 4, 0.25, mode)


def test_text_and_special_tokens_around_the_video_are_kept_as_they_are(model_name: str) -> None:
    model, inputs = _fresh(model_name)
    prepared = prepare(model, inputs, keep=0.25)
    ids = inputs["input_ids"]
    for row in range(ids.shape[0]):
        others = ids[row] != VIDEO  # text, padding, vision start/end, Qwen3's timestamps
        kept = torch.zeros_like(others)
        kept[prepared.kept[row]] = True
        assert kept[others].all()
        assert torch.equal(prepared.kwargs["input_ids"][row][~(prepared.kwargs["input_ids"][row] == VIDEO)],
                           ids[row][others])
    if model_name == "tiny-llava-onevision":  # the video's closing newline token is protected: its feature as is
        with torch.no_grad():
            full = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                  return_dict=True).pooler_output
        reduced = prepared.kwargs["mm_encoder_outputs"]["video"].pooler_output
        assert torch.equal(reduced[:, -1], full.reshape(2, -1, full.shape[-1])[:, -1])


@pytest.mark.parametrize("name", ["tiny-llava-onevision", "tiny-qwen3-vl"])
def test_bfloat16_models_run_reduced_and_keep_one_is_still_exact(name: str) -> None:
    model, inputs = _fresh(name)
    model.to(torch.bfloat16)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(torch.bfloat16)
    logits, generated = _outputs(model, inputs)
    videotome.patch(model, keep=1.0)
    assert all(torch.equal(a, b) for a, b in zip(_outputs(model, inputs), (logits, generated)))
    videotome.patch(model, keep=0.25)  # proportional attention's bias in the model's dtype
    merged, _ = _outputs(model, inputs)
    assert merged.dtype == torch.bfloat16 and merged.isfinite().all()
