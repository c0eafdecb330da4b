"""``videotome vlm bench`` and ``vlm generate``: what reducing a video's visual tokens saves in a video-LLM.

Per kept share: the language model's prefill over the prepared inputs (the video already encoded and reduced, so
the time is the language model's alone), the time to the first token of ``generate`` from the processor's inputs
(vision tower, reduction and prefill), the prefill's analytic FLOPs and the KV cache it leaves
(:mod:`videotome.vlm.cost`). The unreduced model and every share are timed in one process, interleaved round by
round (:func:`videotome.measure.time_rounds`), so their ratios share the machine's load. The same counts at the
7B models' sizes follow, analytically.

``videotome vlm generate`` answers a prompt about a real video with real weights from a local directory, with and
without the reduction, side by side with their timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..measure import resolve_device, time_rounds
from ..options import add_options, check_at_least, device_option, from_args
from .cost import MODELS_7B, LanguageModelShape, analytic_rows
from .models import is_qwen, patch_record, prepare
from .reduce import VideoMergeSettings, read_keep, video_settings
from .tiny import TINY_MODELS, tiny_model, video_inputs


@dataclass(frozen=True)
class VLMBenchConfig:
    """What ``videotome vlm bench`` measures: a model, a video length, the kept shares, how to time."""

    model: str = field(metadata={"help": f"a local model directory, or one of {', '.join(TINY_MODELS)}"})
    frames: int = field(default=8, metadata={"help": "frames of the (random) video"})
    keeps: tuple[float, ...] = field(
        default=(0.5, 0.25, 0.125),
        metadata={"help": "kept shares of the visual tokens to measure, each in (0, 1]", "flag": "--keep",
                  "parse": read_keep},
    )
    merge: VideoMergeSettings = field(
        default_factory=VideoMergeSettings, metadata={"help": "reduction settings besides keep (videotome.patch)"}
    )
    size: int = field(default=56, metadata={"help": "frame side in pixels for the Qwen classes (the LLaVA classes "
                                                    "take their vision tower's)"})
    prompt: int = field(default=16, metadata={"help": "text tokens before the video"})
    repeats: int = field(default=5, metadata={"help": "timed rounds (median)"})
    warmup: int = field(default=1, metadata={"help": "untimed rounds first"})
    device: str | None = device_option()

    def __post_init__(self) -> None:
        check_at_least(self, 1, "frames", "size", "prompt", "repeats")
        check_at_least(self, 0, "warmup")


def load_model(name: str) -> nn.Module:
    """A built-in tiny model by name, or a video-LLM from a local directory (never downloading)."""
    if name in TINY_MODELS:
        return tiny_model(name)
    path = Path(name)
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {name!r} is neither a directory with a config.json nor one of {sorted(TINY_MODELS)}")
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval()


def _size(model: nn.Module, config: VLMBenchConfig) -> int:
    """The frame side the inputs take: the LLaVA classes' vision tower's, else the configured one."""
    if is_qwen(model):
        return config.size
    return model.config.vision_config.image_size


def run_vlm_bench(config: VLMBenchConfig) -> dict[str, object]:
    """Measure the unreduced model and every kept share, interleaved; return the rows and the 7B counts."""
    device = resolve_device(config.device)
    model = load_model(config.model).to(device)
    inputs = video_inputs(model, frames=config.frames, prompt_lengths=[config.prompt], image_size=_size(model, config))
    inputs = {key: value.to(device) for key, value in inputs.items()}
    shape = LanguageModelShape.of(model.config)
    dtype_bytes = next(model.parameters()).element_size()
    import videotome

    keeps = (1.0, *[keep for keep in config.keeps if keep != 1.0])
    prefill_calls, first_token_calls, rows = [], [], []
    for keep in keeps:
        settings = video_settings(config.merge, keep=keep)
        if keep == 1.0:
            videotome.unpatch(model)
            prepared = prepare(model, inputs, settings)
        else:
            videotome.patch(model, settings)
            prepared = prepare(model, inputs, settings, prop_attn=patch_record(model).prop_attn)
        videotome.unpatch(model)
        tokens = prepared.kwargs["input_ids"].shape[1]
        visual = sum(video.reduction.size.numel() for video in prepared.videos)
        rows.append({"keep": keep, "visual_tokens": visual, "sequence": tokens,
                     "gflops": shape.prefill_flops(tokens) / 1e9,
                     "kv_cache_kib": shape.kv_cache_bytes(tokens, dtype_bytes) / 2**10})
        prefill_calls.append(_timed(model, settings if keep != 1.0 else None, lambda p=prepared: model(**p.kwargs)))
        first_token_calls.append(_timed(model, settings if keep != 1.0 else None,
                                        lambda: model.generate(**inputs, max_new_tokens=1, do_sample=False)))
    with torch.inference_mode():
        rounds = time_rounds(prefill_calls + first_token_calls, warmup=config.warmup, repeats=config.repeats,
                             device=device, desc="vlm bench")
    videotome.unpatch(model)
    count = len(keeps)
    for index, row in enumerate(rows):
        prefill, first = rounds[index], rounds[count + index]
        row["prefill_ms"] = 1e3 * statistics.median(prefill)
        row["first_token_ms"] = 1e3 * statistics.median(first)
        row["prefill_speedup"] = statistics.median(a / b for a, b in zip(rounds[0], prefill))
        row["first_token_speedup"] = statistics.median(a / b for a, b in zip(rounds[count], first))
    return {"model": config.model, "frames": config.frames, "device": str(device), "rows": rows,
            "analytic_7b": analytic_rows(MODELS_7B, frames=(config.frames,), keeps=keeps)}


def _timed(model: nn.Module, settings: VideoMergeSettings | None, call):
    """``call`` on the model patched with ``settings`` (unpatched when None), patched afresh each time so that the
    interleaved calls of different shares do not share a patch."""
    import videotome

    def run() -> object:
        if settings is None:
            videotome.unpatch(model)
        else:
            videotome.patch(model, settings)
        return call()

    return run


def format_bench(result: dict[str, object]) -> str:
    """The measured rows and the 7B counts as two Markdown tables."""
    lines = [f"{result['model']}, {result['frames']} frames, {result['device']}:", "",
             "| keep | visual tokens | sequence | prefill ms | speedup | first token ms | speedup | GFLOPs | "
             "KV cache KiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        lines.append(f"| {row['keep']:g} | {row['visual_tokens']} | {row['sequence']} | {row['prefill_ms']:.1f} | "
                     f"{row['prefill_speedup']:.2f}x | {row['first_token_ms']:.1f} | "
                     f"{row['first_token_speedup']:.2f}x | {row['gflops']:.3f} | {row['kv_cache_kib']:.0f} |")
    lines += ["", "At the 7B models' sizes (analytic; 64 prompt tokens, bfloat16 cache):", "",
              "| model | keep | sequence | prefill TFLOPs | of keep 1 | KV cache MiB |", "|---|---|---|---|---|---|"]
    for row in result["analytic_7b"]:
        lines.append(f"| {row['model']} | {row['keep']:g} | {row['tokens']} | {row['tflops']:.2f} | "
                     f"{row['flop_ratio']:.3f} | {row['kv_cache_mib']:.1f} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class VLMGenerateConfig:
    """What ``videotome vlm generate`` runs: a local model directory, a video, a prompt, the reduction."""

    model: str = field(metadata={"help": "a local video-LLM directory (model and processor files)"})
    video: str = field(metadata={"help": "a video file (decoded with PyAV)"})
    prompt: str = field(metadata={"help": "the question about the video"})
    merge: VideoMergeSettings = field(default_factory=VideoMergeSettings, metadata={"help": "reduction settings"})
    frames: int = field(default=8, metadata={"help": "frames sampled uniformly over the video"})
    max_new_tokens: int = field(default=64, metadata={"help": "the longest answer, in tokens"})
    device: str | None = device_option()

    def __post_init__(self) -> None:
        check_at_least(self, 1, "frames", "max_new_tokens")


def run_vlm_generate(config: VLMGenerateConfig) -> dict[str, object]:
    """The answer and its seconds without and with the reduction (greedy, the same inputs)."""
    import time

    from transformers import AutoProcessor

    import videotome

    from ..evaluation.video import SamplingConfig, read_clip
    from ..measure import synchronize

    if not (Path(config.model) / "config.json").is_file():
        raise ValueError(f"--model {config.model!r} is not a local model directory (no config.json)")
    frames = read_clip(config.video, SamplingConfig(config.frames, "uniform"))
    device = resolve_device(config.device)
    model = load_model(config.model).to(device)
    processor = AutoProcessor.from_pretrained(config.model, local_files_only=True)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": config.prompt}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[list(frames)], return_tensors="pt").to(device)
    length = inputs["input_ids"].shape[1]
    answers = {}
    for name, settings in (("unreduced", None), ("reduced", config.merge)):
        videotome.unpatch(model) if settings is None else videotome.patch(model, settings)
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=config.max_new_tokens, do_sample=False)
        synchronize(device)
        answers[name] = {"answer": processor.batch_decode(out[:, length:], skip_special_tokens=True)[0].strip(),
                         "seconds": time.perf_counter() - start, "new_tokens": out.shape[1] - length}
    answers["plan"] = str(videotome.plan(model))
    videotome.unpatch(model)
    return answers


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add ``videotome vlm bench`` and ``vlm generate``."""
    group = subparsers.add_parser("vlm", help="video-LLMs: visual tokens reduced before the language model")
    commands = group.add_subparsers(dest="vlm_command", required=True, metavar="COMMAND")
    bench = commands.add_parser("bench", help="prefill, first token, FLOPs and KV cache against the kept share")
    add_options(bench, VLMBenchConfig, exclude=("keep",))
    bench.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    bench.set_defaults(func=_bench_command)
    generate = commands.add_parser("generate", help="an answer about a video with and without the reduction")
    add_options(generate, VLMGenerateConfig)
    generate.set_defaults(func=_generate_command)


def _bench_command(args: argparse.Namespace) -> int:
    result = run_vlm_bench(from_args(VLMBenchConfig, args))
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _generate_command(args: argparse.Namespace) -> int:
    result = run_vlm_generate(from_args(VLMGenerateConfig, args))
    for name in ("unreduced", "reduced"):
        run = result[name]
        print(f"{name}: {run['seconds']:.2f} s, {run['new_tokens']} tokens\n  {run['answer']}")
    print(result["plan"])
    return 0
