"""Patching real Hugging Face model classes: exactness, reference semantics, invariants and bad input."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import main_output, tiny_input, tiny_model
from transformers import BertConfig, BertModel

import videotome
from videotome.adapters import find_adapter
from videotome.adapters.base import LayerCall, TokenState


def _run(model, pixel_values, **kwargs):
    with torch.no_grad():
        return main_output(model(pixel_values=pixel_values, **kwargs))


def test_r0_is_bit_identical_and_unpatch_restores(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    reference = _run(model, pixel_values)
    videotome.patch(model, 0)
    assert torch.equal(_run(model, pixel_values), reference)
    videotome.patch(model, 3)
    assert not torch.equal(_run(model, pixel_values), reference)
    videotome.unpatch(model)
    assert "forward" not in vars(model)
    assert torch.equal(_run(model, pixel_values), reference)
    videotome.unpatch(model)  # a no-op on an unpatched model


def test_adapter_block_equals_the_models_own_block(family):
    """The merged block forward, with nothing to merge, computes what the model's block computes."""
    model, pixel_values = tiny_model(family), tiny_input(family)
    adapter = find_adapter(model)
    plan = videotome.patch(model, 0) and videotome.plan(model)
    with torch.no_grad():
        x = adapter.embed(model, pixel_values)
        for index, layer in enumerate(adapter.layers(model)):
            ours = adapter.layer_forward(layer, TokenState(x), LayerCall(index, 0, plan)).x
            theirs = adapter.run_original(layer, x)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
            x = theirs


def _reference_forward(model, pixel_values, r, *, class_token, prop_attn, pooled_by_mean):
    """Independent, naive statement of the reference semantics for a joint model (loops, one sample at a time)."""
    base = model.vivit if class_token else model.videomae
    layers = base.layers if class_token else base.encoder.layer
    outputs = []
    for sample in pixel_values:
        x = (base.embeddings(sample[None]) if class_token else base.embeddings(sample[None], None))[0]
        size = torch.ones(x.shape[0], dtype=x.dtype)
        for layer in layers:
            if class_token:
                attention, norm1, norm2 = layer.attention, layer.layernorm_before, layer.layernorm_after
                project = (attention.q_proj, attention.k_proj, attention.v_proj)
                out_proj, mlp = attention.o_proj, layer.mlp
            else:
                attention, norm1, norm2 = layer.attention.attention, layer.layernorm_before, layer.layernorm_after
                project = (attention.query, attention.key, attention.value)
                out_proj = layer.attention.output.dense

                def mlp(h, layer=layer):
                    return layer.output.dense(layer.intermediate(h))

            tokens, channels = x.shape
            heads = model.config.num_attention_heads
            q, k, v = (p(norm1(x)).view(tokens, heads, -1).transpose(0, 1) for p in project)
            logits = q @ k.transpose(1, 2) / math.sqrt(channels // heads)
            if prop_attn:
                logits = logits + size.log()
            x = x + out_proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(tokens, channels))

            keys = k.mean(0)
            step = min(r, (tokens - int(class_token)) // 2)
            a_positions, b_positions = list(range(0, tokens, 2)), list(range(1, tokens, 2))
            best = []
            for i in a_positions:
                if class_token and i == 0:
                    best.append((-math.inf, None))
                    continue
                sims = [F.cosine_similarity(keys[i], keys[j], dim=0).item() for j in b_positions]
                j = max(range(len(sims)), key=lambda n: (sims[n], -n))
                best.append((sims[j], b_positions[j]))
            chosen = set(sorted(range(len(a_positions)), key=lambda a: -best[a][0])[:step])
            rows, sizes = [], []
            for a, i in enumerate(a_positions):
                if a not in chosen:
                    rows.append(x[i])
                    sizes.append(size[i])
            for j in b_positions:
                total, weight = x[j] * size[j], size[j].clone()
                for a in chosen:
                    if best[a][1] == j:
                        total = total + x[a_positions[a]] * size[a_positions[a]]
                        weight = weight + size[a_positions[a]]
                rows.append(total / weight)
                sizes.append(weight)
            x, size = torch.stack(rows), torch.stack(sizes)
            x = x + mlp(norm2(x))
        if pooled_by_mean:
            pooled = model.fc_norm((x * size[:, None]).sum(0) / size.sum())
        else:
            pooled = base.layernorm(x)[0]
        outputs.append(model.classifier(pooled))
    return torch.stack(outputs)


@pytest.mark.parametrize(
    ("family", "options"),
    [
        ("vivit", dict(class_token=True, prop_attn=True, pooled_by_mean=False)),
        ("videomae", dict(class_token=False, prop_attn=False, pooled_by_mean=True)),
    ],
)
def test_logits_match_the_reference_semantics(family, options):
    model = tiny_model(family).double()
    model.set_attn_implementation("eager")
    pixel_values = tiny_input(family).double()
    with torch.no_grad():
        expected = _reference_forward(model, pixel_values, 5, **options)
    videotome.patch(model, 5)
    torch.testing.assert_close(_run(model, pixel_values), expected, rtol=1e-4, atol=1e-6)


def test_eager_and_sdpa_agree(family):
    if family in ("timesformer", "motionformer"):
        pytest.skip(f"{family} has only its own attention, not Hugging Face's eager/SDPA switch")
    eager = tiny_model(family)
    eager.set_attn_implementation("eager")
    sdpa = copy.deepcopy(eager)
    sdpa.set_attn_implementation("sdpa")
    pixel_values = tiny_input(family)
    for model in (eager, sdpa):
        videotome.patch(model, 4, prop_attn=True)
    torch.testing.assert_close(_run(eager, pixel_values), _run(sdpa, pixel_values), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("strategy", ["merge", "drop", "hybrid"])
def test_batch_mates_do_not_change_a_sample(family, strategy):
    model, pixel_values = tiny_model(family), tiny_input(family, batch=3)
    videotome.patch(model, 4, strategy=strategy, threshold=0.5 if strategy == "hybrid" else None)
    together = _run(model, pixel_values)
    for index in range(3):
        alone = _run(model, pixel_values[index : index + 1])
        torch.testing.assert_close(together[index : index + 1], alone, rtol=1e-5, atol=1e-6)


def test_token_counts_follow_the_plan(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 4, schedule="decreasing")
    steps = videotome.plan(model).steps()
    with torch.no_grad():
        hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [steps[0].tokens_in] + [s.tokens_out for s in steps]


@pytest.mark.parametrize("strategy", ["merge", "random_merge"])
def test_merged_sizes_add_up_and_the_class_token_stays_first(family, strategy):
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 5, strategy=strategy, trace_source=True, seed=0)
    _run(model, pixel_values)
    source = videotome.sources(model)
    inputs = videotome.plan(model).steps()[0].tokens_in
    assert source.shape == (2, videotome.plan(model).steps()[-1].tokens_out, inputs)
    assert torch.equal(source.sum(1), torch.ones(2, inputs))  # every input patch in exactly one token
    if family != "videomae":
        assert torch.equal(source[:, 0], F.one_hot(torch.tensor(0), inputs).float().expand(2, -1))


def test_drop_loses_exactly_the_dropped_patches(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 3, strategy="drop", trace_source=True)
    _run(model, pixel_values)
    steps = videotome.plan(model).steps()
    held = videotome.sources(model).sum((1, 2))
    assert held.tolist() == [float(steps[-1].tokens_out)] * 2


def _per_frame_view(source, family, frames):
    """(batch, slot, frame, patch, frame') view of a divided model's source map, without its class token.

    TimeSformer orders tokens patch-major (1 + p * frames + t), Motionformer frame-major (1 + t * count + p).
    """
    body = source[:, 1:, 1:]
    batch, rows, cols = body.shape
    if family == "timesformer":
        return body.view(batch, rows // frames, frames, cols // frames, frames)
    return body.view(batch, frames, rows // frames, frames, cols // frames).permute(0, 2, 1, 4, 3)


DIVIDED = ("timesformer", "motionformer")


def _frames(model):
    return model.config.num_frames // getattr(model.config, "tubelet_size", 1)


@pytest.mark.parametrize("divided", ["per_frame", "aligned"])
@pytest.mark.parametrize("family", DIVIDED)
def test_divided_merging_never_crosses_frames(family, divided):
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 3, divided=divided, trace_source=True)
    _run(model, pixel_values)
    view = _per_frame_view(videotome.sources(model), family, _frames(model))
    held_by_frame = view.sum(dim=3)  # (batch, slot, frame, frame'): patches of frame' held by the slot of frame
    off_diagonal = held_by_frame - torch.diag_embed(held_by_frame.diagonal(dim1=2, dim2=3))
    assert off_diagonal.abs().sum() == 0
    assert held_by_frame.diagonal(dim1=2, dim2=3).sum() == view.sum()


@pytest.mark.parametrize("family", DIVIDED)
def test_aligned_merges_the_same_positions_in_every_frame(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    frames = _frames(model)
    patterns = {}
    for divided in ("aligned", "per_frame"):
        videotome.patch(model, 3, divided=divided, trace_source=True)
        _run(model, pixel_values)
        # the patches each slot holds, frame by frame: (batch, slot, patch, frame)
        per_frame = _per_frame_view(videotome.sources(model), family, frames).diagonal(dim1=2, dim2=4)
        patterns[divided] = all(torch.equal(per_frame[..., 0], per_frame[..., t]) for t in range(frames))
    assert patterns == {"aligned": True, "per_frame": False}


def test_hybrid_spans_merge_and_drop(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    outputs = {}
    for name, options in {
        "merge": dict(strategy="merge"),
        "drop": dict(strategy="drop"),
        "all_merged": dict(strategy="hybrid", threshold=-1.0),
        "all_dropped": dict(strategy="hybrid", threshold=1.0),
    }.items():
        videotome.patch(model, 4, **options)
        outputs[name] = _run(model, pixel_values)
    torch.testing.assert_close(outputs["all_merged"], outputs["merge"])
    torch.testing.assert_close(outputs["all_dropped"], outputs["drop"])


@pytest.mark.parametrize("strategy", ["random_drop", "random_merge"])
def test_random_strategies_repeat_with_a_seed(strategy):
    model, pixel_values = tiny_model("vivit"), tiny_input("vivit")
    results = []
    for seed in (7, 7, 8):
        videotome.patch(model, 4, strategy=strategy, seed=seed)
        results.append(_run(model, pixel_values))
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(family, dtype):
    model, pixel_values = tiny_model(family), tiny_input(family)
    expected = videotome.patch(model, 4) and _run(model, pixel_values)
    model.to(dtype)
    with torch.inference_mode():
        output = main_output(model(pixel_values=pixel_values.to(dtype)))
    assert output.dtype == dtype
    torch.testing.assert_close(output.float(), expected, rtol=0.1, atol=0.1)


def test_training_sends_gradients_through_merged_tokens(family):
    """Every parameter that learns in the unmerged model still learns when its tokens are merged."""
    model, pixel_values = tiny_model(family), tiny_input(family)
    model.train()

    def learning_parameters():
        model.zero_grad(set_to_none=True)
        main_output(model(pixel_values=pixel_values)).square().mean().backward()
        return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    unmerged = learning_parameters()
    videotome.patch(model, 4)
    assert learning_parameters() == unmerged


def test_classifier_loss_with_labels():
    model, pixel_values = tiny_model("videomae"), tiny_input("videomae")
    videotome.patch(model, 4)
    output = model(pixel_values=pixel_values, labels=torch.tensor([1, 3]))
    torch.testing.assert_close(output.loss, F.cross_entropy(output.logits, torch.tensor([1, 3])))
    assert isinstance(model(pixel_values=pixel_values, return_dict=False), tuple)


def test_torch_compile_of_a_patched_model(family):
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 4)
    expected = _run(model, pixel_values)
    compiled = torch.compile(model, backend="aot_eager")
    torch.testing.assert_close(_run(compiled, pixel_values), expected, rtol=1e-5, atol=1e-5)


def test_patching_twice_replaces_the_plan():
    model = tiny_model("vivit")
    videotome.patch(model, 4)
    videotome.patch(model, 0.1, schedule="increasing", strategy="hybrid", threshold=0.8)
    plan = videotome.plan(model)
    assert plan.settings.strategy == "hybrid" and plan.settings.schedule == "increasing" and plan.r == (0, 3, 6)


def test_defaults_per_family():
    assert not videotome.plan(videotome.patch(tiny_model("videomae"), 2)).prop_attn
    assert videotome.plan(videotome.patch(tiny_model("vivit"), 2)).prop_attn
    assert not videotome.plan(videotome.patch(tiny_model("vivit"), 2, prop_attn=False)).prop_attn


def test_unsupported_model_names_the_supported_classes():
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(TypeError, match="BertModel is not supported.*VideoMAEForVideoClassification.*Dinov2Model"):
        videotome.patch(bert, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(r=-3), "r=-3"),
        (dict(r=1.2), "r=1.2"),
        (dict(r=4, strategy="mean"), "strategy='mean'"),
        (dict(r=4, schedule="linear"), "schedule='linear'"),
        (dict(r=4, strategy="hybrid", threshold=-2), "threshold=-2"),
        (dict(r=4, schedule=[1, 1]), "schedule has 2 values; expected one per layer \\(3\\)"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_alone(kwargs, message):
    model = tiny_model("vivit")
    with pytest.raises(ValueError, match=message):
        videotome.patch(model, **kwargs)
    assert "forward" not in vars(model)


def test_sources_and_plan_explain_misuse():
    model = tiny_model("vivit")
    with pytest.raises(ValueError, match="not patched"):
        videotome.plan(model)
    videotome.patch(model, 2)
    with pytest.raises(ValueError, match="trace_source=True"):
        videotome.sources(model)
    videotome.patch(model, 2, trace_source=True)
    with pytest.raises(ValueError, match="run a forward pass"):
        videotome.sources(model)


def test_token_grid_places_every_input_token(family):
    """The grid has one (time, row, col) per input token, each place once, in the embedding's own order."""
    model = tiny_model(family)
    grid = videotome.token_grid(model)
    videotome.patch(model, 0)
    assert grid.shape == (videotome.plan(model).steps()[0].tokens_in, 3)
    patches = grid[(grid >= 0).all(dim=1)]
    assert len({tuple(p) for p in patches.tolist()}) == len(patches)
    assert (grid < 0).all(dim=1).sum() == (0 if family == "videomae" else 1)


def test_token_grid_follows_the_embedding_order():
    """Features of one patch, written into one place of the clip, show up at the grid's token for that place."""
    for family in ("videomae", "timesformer", "motionformer"):
        model = tiny_model(family)
        grid = videotome.token_grid(model)
        frames = 8 if family == "motionformer" else 4
        tubelet = 1 if family == "timesformer" else model.config.tubelet_size
        clip = torch.zeros(1, frames, 3, 32, 32)
        clip[:, tubelet, :, 8:16, 16:24] = 50.0  # time step 1, patch row 1, patch column 2
        adapter = find_adapter(model)
        with torch.no_grad():
            moved = adapter.embed(model, clip) - adapter.embed(model, torch.zeros_like(clip))
        changed = moved.abs().sum(-1)[0].nonzero().flatten().tolist()
        assert [grid[i].tolist() for i in changed] == [[1, 1, 2]], family


def test_groups_shrunk_to_one_token_stay_as_they_are(family):
    """Seven layers halve 32 tokens (16 per frame) to one per group before the last layers; nothing breaks and the
    token counts follow the plan's clamped values."""
    model, pixel_values = tiny_model(family, layers=7), tiny_input(family)
    videotome.patch(model, 100, trace_source=True)
    steps = videotome.plan(model).steps()
    assert steps[-1].effective_r == 0
    with torch.no_grad():
        hidden = model(pixel_values=pixel_values, output_hidden_states=True).hidden_states
    assert [h.shape[1] for h in hidden] == [steps[0].tokens_in] + [s.tokens_out for s in steps]
    assert torch.equal(videotome.sources(model).sum(1), torch.ones(2, steps[0].tokens_in))
