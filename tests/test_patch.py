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

#: families run through Hugging Face's attention interface, with its eager/SDPA switch
JOINT = ("videomae", "vivit", "vit", "dinov2")
#: divided space-time families, which have only their own attention
DIVIDED = ("timesformer", "motionformer")


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


# The reference semantics written out naively: plain loops over samples, frames and patch slots, one sequence at a
# time, from the models' own modules (embeddings, norms, projections, MLPs); nothing from videotome.


def _heads(projection: torch.nn.Module, h: torch.Tensor, heads: int) -> torch.Tensor:
    """One projection of a sequence h (tokens, C), split into heads: (heads, tokens, C / heads)."""
    return projection(h).view(h.shape[0], heads, -1).transpose(0, 1)


def _fused_heads(qkv: torch.nn.Module, h: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (heads, tokens, C / heads) from one fused Linear laid out as [q | k | v]."""
    return tuple(part.transpose(0, 1) for part in qkv(h).view(h.shape[0], 3, heads, -1).unbind(1))


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, size: torch.Tensor, prop_attn: bool
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [+ log size of every key]) v of one sequence: (heads, tokens, d) -> (tokens, C)."""
    logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])
    if prop_attn:
        logits = logits + size.log()
    return (logits.softmax(-1) @ v).transpose(0, 1).flatten(1)


def _match(keys: torch.Tensor, r: int, protect_first: bool) -> dict[int, int]:
    """Which A positions (even) merge into which B position (odd) of one sequence, from its head-averaged keys."""
    tokens = keys.shape[0]
    a_positions, b_positions = range(0, tokens, 2), range(1, tokens, 2)
    step = min(r, (tokens - int(protect_first)) // 2)
    best = {}
    for i in a_positions:
        if protect_first and i == 0:
            best[i] = (-math.inf, None)
            continue
        sims = [F.cosine_similarity(keys[i], keys[j], dim=0).item() for j in b_positions]
        n = max(range(len(sims)), key=lambda n: (sims[n], -n))
        best[i] = (sims[n], b_positions[n])
    chosen = sorted(a_positions, key=lambda i: -best[i][0])[:step]  # a stable sort: ties keep the earlier token
    return {i: best[i][1] for i in chosen}


def _merge(x: torch.Tensor, size: torch.Tensor, matching: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted average of each chosen A token into its B partner; new order: unchosen A tokens, then all B.

    With nothing to merge the sequence stays as it is."""
    if not matching:
        return x, size
    rows, sizes = [], []
    for i in range(0, x.shape[0], 2):
        if i not in matching:
            rows.append(x[i])
            sizes.append(size[i])
    for j in range(1, x.shape[0], 2):
        members = [j] + [i for i, partner in matching.items() if partner == j]
        weight = sum(size[m] for m in members)
        rows.append(sum(x[m] * size[m] for m in members) / weight)
        sizes.append(weight)
    return torch.stack(rows), torch.stack(sizes)


def _joint_block(family: str, layer: torch.nn.Module) -> tuple:
    """A joint family's block as (norm before attention, q/k/v projections, attention branch on the heads'
    output, MLP branch on the residual stream)."""
    if family == "videomae":
        attention = layer.attention.attention
        return (
            layer.layernorm_before,
            (attention.query, attention.key, attention.value),
            layer.attention.output.dense,
            lambda x: layer.output.dense(layer.intermediate(layer.layernorm_after(x))),
        )
    attention = layer.attention
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    if family == "dinov2":
        return (
            layer.norm1,
            projections,
            lambda a: layer.layer_scale1.lambda1 * attention.o_proj(a),
            lambda x: layer.layer_scale2.lambda1 * layer.mlp(layer.norm2(x)),
        )
    return layer.layernorm_before, projections, attention.o_proj, lambda x: layer.mlp(layer.layernorm_after(x))


def _naive_joint(
    model: torch.nn.Module, family: str, pixel_values: torch.Tensor, schedule: list[int], prop_attn: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Main output and final (un-normalised) tokens of a joint model (VideoMAE, ViViT, ViT, DINOv2), sample by
    sample."""
    class_token = family != "videomae"
    heads = model.config.num_attention_heads
    outputs, finals = [], []
    for sample in pixel_values:
        if family == "videomae":
            x, layers = model.videomae.embeddings(sample[None], None)[0], model.videomae.encoder.layer
        elif family == "vivit":
            x, layers = model.vivit.embeddings(sample[None])[0], model.vivit.layers
        else:
            x = model.embeddings(sample[None])[0]
            layers = model.layers if family == "vit" else model.encoder.layer
        size = torch.ones(x.shape[0], dtype=x.dtype)
        for layer, r in zip(layers, schedule, strict=True):
            norm1, projections, attention_branch, mlp_branch = _joint_block(family, layer)
            h = norm1(x)
            q, k, v = (_heads(projection, h, heads) for projection in projections)
            x = x + attention_branch(_attention(q, k, v, size, prop_attn))
            x, size = _merge(x, size, _match(k.mean(0), r, protect_first=class_token))
            x = x + mlp_branch(x)
        finals.append(x)
        if family == "videomae":
            outputs.append(model.classifier(model.fc_norm((x * size[:, None]).sum(0) / size.sum())))
        elif family == "vivit":
            outputs.append(model.classifier(model.vivit.layernorm(x)[0]))
        else:
            outputs.append(model.layernorm(x))
    return torch.stack(outputs), torch.stack(finals)


def _merge_frames(
    tokens: torch.Tensor, sizes: torch.Tensor, keys: torch.Tensor, r: int, divided: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge each frame's tokens (frames, count, C) with sizes (frames, count): every frame matched on its own keys
    (per_frame), or all frames on the frame-averaged keys (aligned)."""
    shared = _match(keys.mean(0), r, protect_first=False) if divided == "aligned" else None
    merged = [
        _merge(tokens[t], sizes[t], shared if shared is not None else _match(keys[t], r, protect_first=False))
        for t in range(tokens.shape[0])
    ]
    return torch.stack([x for x, _ in merged]), torch.stack([s for _, s in merged])


def _naive_timesformer(
    model: torch.nn.Module, pixel_values: torch.Tensor, schedule: list[int], prop_attn: bool, divided: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and final tokens of a TimeSformer: per patch slot temporal attention over frames, then per frame
    spatial attention with a copy of the class token, merging per frame, the MLP; tokens patch-major."""
    base, heads, frames = model.timesformer, model.config.num_attention_heads, model.config.num_frames
    outputs, finals = [], []
    for sample in pixel_values:
        x = base.embeddings(sample[None])[0]
        count = (x.shape[0] - 1) // frames
        cls = x[0]
        tokens = torch.stack([torch.stack([x[1 + p * frames + t] for p in range(count)]) for t in range(frames)])
        sizes = torch.ones(frames, count, dtype=x.dtype)
        for layer, r in zip(base.encoder.layer, schedule, strict=True):
            temporal = layer.temporal_attention
            slots = []
            for p in range(tokens.shape[1]):
                h = layer.temporal_layernorm(tokens[:, p])
                attended = _attention(*_fused_heads(temporal.attention.qkv, h, heads), sizes[:, p], prop_attn)
                slots.append(tokens[:, p] + layer.temporal_dense(temporal.output.dense(attended)))
            tokens = torch.stack(slots, dim=1)

            spatial = layer.attention
            per_frame, cls_updates, keys = [], [], []
            for t in range(frames):
                h = layer.layernorm_before(torch.cat([cls[None], tokens[t]]))
                q, k, v = _fused_heads(spatial.attention.qkv, h, heads)
                frame_size = torch.cat([torch.ones(1, dtype=x.dtype), sizes[t]])
                out = spatial.output.dense(_attention(q, k, v, frame_size, prop_attn))
                cls_updates.append(out[0])
                per_frame.append(tokens[t] + out[1:])
                keys.append(k.mean(0)[1:])
            cls = cls + torch.stack(cls_updates).mean(0)
            tokens, sizes = _merge_frames(torch.stack(per_frame), sizes, torch.stack(keys), r, divided)

            x = torch.cat([cls[None], tokens.transpose(0, 1).flatten(0, 1)])  # patch-major again
            x = x + layer.output.dense(layer.intermediate(layer.layernorm_after(x)))
            cls, tokens = x[0], x[1:].view(-1, frames, x.shape[-1]).transpose(0, 1)
        finals.append(x)
        outputs.append(model.classifier(base.layernorm(x)[0]))
    return torch.stack(outputs), torch.stack(finals)


def _naive_motionformer(
    model: torch.nn.Module, pixel_values: torch.Tensor, schedule: list[int], prop_attn: bool, divided: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and final tokens of a Motionformer: trajectory attention (the model's own module, checked against a
    naive loop in test_motionformer_model.py) with log sizes in frame-major order, merging per frame, the MLP."""
    base, heads, frames = model.motionformer, model.config.num_attention_heads, model.config.num_temporal_tokens
    outputs, finals = [], []
    for sample in pixel_values:
        x = base.embed(sample[None])[0]
        count = (x.shape[0] - 1) // frames
        sizes = torch.ones(frames, count, dtype=x.dtype)
        for layer, r in zip(base.blocks, schedule, strict=True):
            h = layer.norm1(x)
            bias = torch.cat([torch.zeros(1, dtype=x.dtype), sizes.flatten().log()]) if prop_attn else None
            x = x + layer.attn(h[None], frames, None if bias is None else bias[None])[0]
            _, k, _ = _fused_heads(layer.attn.qkv, h, heads)
            keys = k.mean(0)[1:].view(frames, -1, k.shape[-1])
            tokens, sizes = _merge_frames(x[1:].view(frames, -1, x.shape[-1]), sizes, keys, r, divided)
            x = torch.cat([x[:1], tokens.flatten(0, 1)])  # frame-major: 1 + t * count + p
            x = x + layer.mlp(layer.norm2(x))
        finals.append(x)
        outputs.append(model.head(base.norm(x)[0]))
    return torch.stack(outputs), torch.stack(finals)


SCHEDULES = ([2, 2, 2], [5, 0, 3], [100, 100, 100])


def _double_model(family: str) -> torch.nn.Module:
    """The family's tiny model in float64; DINOv2's LayerScale gets a different random factor per channel."""
    model = tiny_model(family).double()
    if family == "dinov2":
        with torch.no_grad():
            for layer in model.encoder.layer:
                layer.layer_scale1.lambda1.uniform_(0.2, 1.5)
                layer.layer_scale2.lambda1.uniform_(0.2, 1.5)
    return model


def _assert_patched_model_matches(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    schedule: list[int],
    expected: tuple[torch.Tensor, torch.Tensor],
    **options: object,
) -> None:
    """The patched model's main output and last block's tokens equal the naive computation's."""
    outputs, finals = expected
    videotome.patch(model, 0, schedule=schedule, **options)
    with torch.no_grad():
        result = model(pixel_values=pixel_values, output_hidden_states=True)
    # float64 agrees to rounding, except TimeSformer's attention, whose softmax runs in float32 (as Hugging Face's
    # eager attention does): about 2e-9 from the float64 reference at these sizes
    torch.testing.assert_close(main_output(result), outputs, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(result.hidden_states[-1], finals, rtol=1e-7, atol=1e-8)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("prop_attn", [True, False])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("family", JOINT)
def test_joint_models_match_the_reference_semantics(family, schedule, prop_attn):
    model, pixel_values = _double_model(family), tiny_input(family, batch=3).double()
    with torch.no_grad():
        expected = _naive_joint(model, family, pixel_values, schedule, prop_attn)
    _assert_patched_model_matches(model, pixel_values, schedule, expected, prop_attn=prop_attn)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("divided", ["per_frame", "aligned"])
@pytest.mark.parametrize("prop_attn", [True, False])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("family", DIVIDED)
def test_divided_models_match_the_reference_semantics(family, schedule, prop_attn, divided):
    model, pixel_values = _double_model(family), tiny_input(family).double()
    naive = _naive_timesformer if family == "timesformer" else _naive_motionformer
    with torch.no_grad():
        expected = naive(model, pixel_values, schedule, prop_attn, divided)
    _assert_patched_model_matches(model, pixel_values, schedule, expected, prop_attn=prop_attn, divided=divided)


@pytest.mark.parametrize("family", JOINT)
def test_eager_and_sdpa_agree(family):
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
    """In fp16/bf16 a patched model follows the plan's token counts, keeps every patch in exactly one token, and
    stays within a few of the dtype's epsilons (relative to the output's scale) of the float32 model."""
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 4, trace_source=True)
    expected = _run(model, pixel_values)
    steps = videotome.plan(model).steps()
    model.to(dtype)
    with torch.inference_mode():
        output = model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
    assert main_output(output).dtype == dtype
    assert [h.shape[1] for h in output.hidden_states] == [steps[0].tokens_in] + [s.tokens_out for s in steps]
    assert torch.equal(videotome.sources(model).sum(1), torch.ones(2, steps[0].tokens_in))
    # rounding weights, inputs and every step of three layers costs at most 3 epsilons of the output's scale in
    # these models (even where bf16 flips a near-tied match); 8 leaves room, a wrong merge costs far more
    error = (main_output(output).float() - expected).abs().max()
    assert error <= 8 * torch.finfo(dtype).eps * expected.abs().max()


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


def test_torch_compile_of_a_patched_model_is_one_graph(family):
    """fullgraph=True fails on any graph break, so every block, merge steps included, is traced whole."""
    model, pixel_values = tiny_model(family), tiny_input(family)
    videotome.patch(model, 4)
    expected = _run(model, pixel_values)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(_run(compiled, pixel_values), expected, rtol=1e-5, atol=1e-5)


def test_a_compiled_model_follows_a_new_plan():
    model, pixel_values = tiny_model("vivit"), tiny_input("vivit")
    videotome.patch(model, 4)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    first = _run(compiled, pixel_values)
    videotome.patch(model, 2)
    torch.testing.assert_close(_run(compiled, pixel_values), _run(model, pixel_values), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, _run(model, pixel_values))


@pytest.mark.parametrize("family", ["vivit", "motionformer"])
def test_inductor_compiles_a_patched_model(family):
    """The inductor backend (C++ kernels on the CPU) on a joint and a divided family: one graph, the same outputs
    within float tolerance (inductor fuses and reorders the arithmetic)."""
    model, pixel_values = tiny_model(family, layers=2), tiny_input(family)
    videotome.patch(model, 4)
    expected = _run(model, pixel_values)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(pixel_values=pixel_values)
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0)
    compiled = torch.compile(model, backend="inductor", fullgraph=True)
    torch.testing.assert_close(_run(compiled, pixel_values), expected, rtol=1e-4, atol=1e-4)


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
