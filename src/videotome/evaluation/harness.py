"""The evaluation loop: load a model, optionally patch it with ``videotome.patch``, classify every clip once.

Runs in one process or under ``torchrun`` (gloo on CPU, NCCL on GPU): each rank takes a disjoint strided shard of the
clips still to do, every rank runs the same number of steps, and rank 0 gathers each step's records and writes them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import videotome

from ..distributed import DistContext, broadcast, gather, init_distributed
from ..errors import VideotomeError
from ..heads import format_heads, heads_text, logits_per_head, model_heads, parse_heads
from ..loading import VIDEO_MODEL_TYPES, load_local_model, resolve_model_dir, stored_settings
from ..measure import synchronize
from ..options import DEVICE_HELP, check_at_least
from ..plan import MergeSettings, read_plan
from .datasets import DATASETS, Sample, check_labels, class_names_from_id2label, head_class_names, load_samples
from .logits import LogitsWriter, clip_logits
from .results import ResultsError, ResultsWriter, compute_metrics, run_id
from .video import (
    DECODERS,
    SAMPLING_MODES,
    DecodeError,
    Preprocessing,
    SamplingConfig,
    check_decoder,
    load_preprocessing,
    model_sampling,
    read_input,
)

TOP_K = 5


class EvaluationError(VideotomeError, RuntimeError):
    """An evaluation that cannot start or must stop (bad model, ``--strict`` failure)."""


def _help(text: str, **more: Any) -> dict[str, Any]:
    return {"help": text, **more}


@dataclass
class EvalConfig:
    """Everything ``videotome eval`` needs; each field is one of its flags (``run_settings`` picks those that define
    a run's predictions)."""

    model: str = field(metadata=_help("checkpoint directory (or a Hub id already in the local cache)"))
    dataset: str = field(metadata=_help("annotation format", choices=DATASETS))
    annotations: str = field(metadata=_help("annotation file of the split to evaluate"))
    root: str = field(metadata=_help("folder the videos are in"))
    merge: MergeSettings = field(
        default_factory=MergeSettings, metadata=_help("token reduction (videotome.patch)")
    )
    plan: str | None = field(
        default=None,
        metadata=_help("a plan file (videotome tune --json) with every merge setting, for a model of its shape"),
    )
    frames: int | None = field(default=None, metadata=_help("frames per clip (default: the model's)"))
    sampling: str | None = field(
        default=None, metadata=_help("frame sampling (default: the family's)", choices=SAMPLING_MODES)
    )
    stride: int | None = field(default=None, metadata=_help("frame stride of dense sampling (default: the family's)"))
    heads: str | None = field(
        default=None,
        metadata=_help("split logits into named heads, e.g. verb:97,noun:300 (EPIC-KITCHENS)", parse=heads_text),
    )
    classes: str | None = field(
        default=None, metadata=_help("class list (k400: names, one a line or JSON; ssv2: labels.json)")
    )
    limit: int | None = field(default=None, metadata=_help("evaluate only the first N clips"))
    decoder: str = field(default="pyav", metadata=_help("video decoder (decord only if installed)", choices=DECODERS))
    batch_size: int = field(default=8, metadata=_help("clips per forward pass"))
    workers: int = field(default=2, metadata=_help("decoding worker processes"))
    device: str | None = field(default=None, metadata=_help(DEVICE_HELP))
    strict: bool = field(default=False, metadata=_help("stop at the first missing or undecodable video"))
    progress: bool = field(default=True, metadata=_help("hide the progress bar", flag="--no-progress"))
    save_logits: bool = field(
        default=False, metadata=_help("also write every clip's logits beside the results file (RUN.logits/)")
    )

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r} is not one of {DATASETS}")
        check_at_least(self, 1, "batch_size", "limit", "frames", "stride")
        check_at_least(self, 0, "workers")
        parse_heads(self.heads)
        if self.plan is not None:
            self.merge = _plan_merge(self.plan, self.merge)


def _plan_merge(plan: str, flags: MergeSettings) -> MergeSettings:
    """The settings of a plan file; a reduction flag may repeat the plan's value but not contradict it."""
    settings = read_plan(plan)[0]
    defaults = MergeSettings()
    for name, value in vars(flags).items():
        if value != getattr(defaults, name) and value != getattr(settings, name):
            raise ValueError(f"--plan {plan} sets {name}={getattr(settings, name)!r}; a flag says {value!r}")
    return settings


@dataclass
class LoadedModel:
    """A classifier ready for evaluation, with what is needed to feed it."""

    model: torch.nn.Module
    directory: Path
    model_type: str
    config: Any
    sampling: SamplingConfig
    preprocessing: Preprocessing
    heads: dict[str, int] | None = None


#: image backbones that interpolate their position embeddings to any input size (DINOv2 is trained at 518 pixels
#: and published with a 224-pixel processor)
INTERPOLATING_TYPES = ("dinov2",)


def read_model_config(directory: Path) -> dict[str, Any]:
    """Read a checkpoint's ``config.json`` as a plain dict."""
    path = directory / "config.json"
    if not path.is_file():
        raise EvaluationError(f"{directory} has no config.json; expected a Hugging Face checkpoint directory")
    return json.loads(path.read_text())


def model_directory(reference: str) -> Path:
    """The checkpoint directory of ``--model`` (a directory, or a Hub id in the local cache)."""
    try:
        return resolve_model_dir(reference)
    except ValueError as error:
        raise EvaluationError(str(error)) from None


def read_samples(config: EvalConfig, directory: Path) -> list[Sample]:
    """The clips ``config`` evaluates (its first ``limit``), with class names from the checkpoint's ``config.json``:
    read before any weights, so that bad annotations fail fast (and a sweep can check every run first)."""
    id2label = read_model_config(directory).get("id2label") or {}
    samples = load_samples(
        config.dataset, config.annotations, config.root, class_names_from_id2label(id2label), config.classes
    )
    return samples[: config.limit] if config.limit is not None else samples


def load_classifier(config: EvalConfig, directory: Path, device: torch.device) -> LoadedModel:
    """Load the classifier in ``directory`` (a transformers video model or the Motionformer) and its sampling,
    preprocessing and heads (flags first, then the checkpoint's own settings, then the family's defaults)."""
    loaded = load_model(directory, device, config.frames, config.sampling, config.stride)
    loaded.heads = model_heads(loaded.config, config.heads)
    return loaded


def load_model(
    directory: Path,
    device: torch.device,
    frames: int | None = None,
    sampling: str | None = None,
    stride: int | None = None,
    *,
    model_types: tuple[str, ...] = VIDEO_MODEL_TYPES,
) -> LoadedModel:
    """Load the model in ``directory`` with the frame sampling and preprocessing that feed it (the values given,
    then the checkpoint's own settings, then the family's defaults); a model type outside ``model_types`` is
    refused before any weights are read (image backbones, run frame by frame, are ``IMAGE_MODEL_TYPES``)."""
    model_type = read_model_config(directory).get("model_type", "")
    if model_type not in model_types:
        raise EvaluationError(f"{directory} holds a {model_type!r} model; expected one of {model_types}")
    model = load_local_model(directory)
    model_config = model.config
    frame_sampling = model_sampling(model_config, frames, sampling, stride)
    image_size = getattr(model_config, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    preprocessing = load_preprocessing(directory, model_type, int(image_size))
    side = preprocessing.crop or preprocessing.resize_to
    if model_type in INTERPOLATING_TYPES and side is not None and side[0] == side[1] != image_size:
        model_config.image_size = side[0]  # it runs at the size its processor feeds it: layout and grid follow
    return LoadedModel(model.to(device).eval(), directory, model_type, model_config, frame_sampling, preprocessing)


def run_settings(config: EvalConfig, loaded: LoadedModel) -> dict[str, Any]:
    """The settings that define a run's predictions (and so its identity in the results file)."""
    settings = {
        "model": str(loaded.directory),
        "model_type": loaded.model_type,
        "dataset": config.dataset,
        "annotations": str(Path(config.annotations).resolve()),
        "limit": config.limit,
        "merge": config.merge.canonical().to_dict(),
        "sampling": asdict(loaded.sampling),
        "preprocessing": loaded.preprocessing.to_dict(),
        "heads": format_heads(loaded.heads),
        "classes": config.classes,
        "decoder": config.decoder,
    }
    return json.loads(json.dumps(settings))  # as read back from the file (tuples become lists)


def package_version(package: str) -> str | None:
    """The installed version of a package, or None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def make_header(
    settings: dict[str, Any],
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    world: int = 1,
    class_names: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The first line of a run: settings, each head's class names (those known; outside the settings, so they do
    not change the run's id), library versions and hardware."""
    return {
        "type": "header",
        "run": run_id(settings),
        "settings": settings,
        "class_names": class_names or {},
        "batch_size": batch_size,
        "workers": workers,
        "versions": {
            "python": platform.python_version(),
            **{name: package_version(name) for name in ("videotome", "torch", "transformers", "av", "numpy")},
        },
        "hardware": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "world_size": world,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class ClipDataset(Dataset):
    """Decodes and preprocesses clips in DataLoader workers; a failure becomes an error entry, not an exception."""

    def __init__(self, samples: list[Sample], sampling: SamplingConfig, preprocessing: Preprocessing, decoder: str):
        self.samples = samples
        self.sampling = sampling
        self.preprocessing = preprocessing
        self.decoder = decoder

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            _, pixels = read_input(sample.path, self.sampling, self.preprocessing, sample.start, sample.end,
                                   self.decoder)
        except DecodeError as error:
            return {"sample": sample, "pixels": None, "error": str(error)}
        return {"sample": sample, "pixels": pixels, "error": None}


def _collate_items(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader collate: keep items apart, so failed clips travel with the good ones."""
    return batch


def forward_batch(
    model: torch.nn.Module, pixels: torch.Tensor, heads: dict[str, int] | None
) -> tuple[dict[str, torch.Tensor], float]:
    """Run the model on a batch; return float32 logits per head (on the CPU) and the seconds the forward pass
    took."""
    synchronize(pixels.device)
    begin = time.perf_counter()
    with torch.inference_mode():
        output = model(pixel_values=pixels)
    synchronize(pixels.device)
    seconds = time.perf_counter() - begin
    return {head: logits.float().cpu() for head, logits in logits_per_head(output, heads).items()}, seconds


def trained_merge_mismatch(model_config: Any, settings: MergeSettings) -> str | None:
    """What to warn about when a checkpoint fine-tuned with merging (``videotome finetune --reduce``, recorded in its
    config) is run with other merge settings; None when they agree or it records none."""
    trained = stored_settings(model_config).get("merge")
    if trained is None or MergeSettings.from_dict(trained).canonical() == settings.canonical():
        return None
    return (f"was fine-tuned with merging {MergeSettings.from_dict(trained).canonical().to_dict()} but runs with "
            f"{settings.canonical().to_dict()}; its accuracy may differ from the one it was trained for")


def apply_reduction(model: torch.nn.Module, settings: MergeSettings, plan: str | None = None) -> None:
    """Patch the model with ``videotome.patch`` when the settings reduce tokens (else it stays as it is); the
    settings of a plan file go through ``patch(plan=)``, which refuses a plan for another model shape."""
    if plan is not None:
        videotome.patch(model, plan=plan)
    elif settings.reduces:
        videotome.patch(model, settings)


Item = dict[str, Any]
"""One clip on its way through the loop: its ``sample``, its ``pixels`` (None when it failed) and the ``error``."""


def clip_records(items: list[Item], probabilities: dict[str, torch.Tensor], brief: dict[str, Any]) -> list[dict]:
    """One results line per clip: labels, top-5 (index, probability) per head, or the error."""
    records, row = [], 0
    for item in items:
        sample: Sample = item["sample"]
        record = {"type": "clip", "id": sample.id, "labels": sample.labels, "settings": brief, "error": item["error"]}
        if item["error"] is None:
            top5 = {}
            for head, probs in probabilities.items():
                values, indices = probs[row].topk(min(TOP_K, probs.shape[-1]))
                top5[head] = [[int(i), round(float(v), 6)] for i, v in zip(indices, values)]
            record["top5"] = top5
            row += 1
        else:
            record["top5"] = None
        records.append(record)
    return records


def _probe(loaded: LoadedModel, heads: dict[str, int] | None, device: torch.device) -> dict[str, int]:
    """Warm the model up on one blank clip and return its head sizes (checked against the labels)."""
    crop = loaded.preprocessing.crop or loaded.preprocessing.resize_to
    if crop is None:
        size = getattr(loaded.config, "image_size", 224)
        crop = (size, size)
    pixels = torch.zeros(1, loaded.sampling.frames, 3, *crop, device=device)
    try:
        with torch.inference_mode():
            output = loaded.model(pixel_values=pixels)
    except RuntimeError as error:
        raise EvaluationError(
            f"the model rejects clips of {loaded.sampling.frames} frames of {crop[0]}x{crop[1]} "
            f"(check --frames and the preprocessor config): {error}"
        ) from error
    return {head: logits.shape[-1] for head, logits in logits_per_head(output, heads).items()}


def _brief(settings: dict[str, Any]) -> dict[str, Any]:
    """What every clip line repeats of its run's settings."""
    return {key: settings[key] for key in ("model", "dataset", "merge")}


def evaluate(config: EvalConfig, *, new_runs: bool = False, resume: bool = False, out: str | Path) -> dict[str, Any]:
    """Evaluate one model setting on one dataset into ``out``; return the run's summary (metrics, throughput).

    ``resume`` continues the run with the same settings; ``new_runs`` (sweeps) also appends a run to a file that
    holds others. Clips already in the file are skipped, so a resumed run ends with exactly one line per clip.
    """
    check_decoder(config.decoder)
    directory = model_directory(config.model)
    samples = read_samples(config, directory)
    context = init_distributed(config.device)
    loaded = load_classifier(config, directory, context.device)
    heads = loaded.heads
    apply_reduction(loaded.model, config.merge, config.plan)
    running = videotome.plan(loaded.model).settings if config.plan is not None else config.merge
    mismatch = trained_merge_mismatch(loaded.config, running)
    if mismatch and context.is_main:
        print(f"videotome: warning: {directory} {mismatch}", file=sys.stderr)
    head_sizes = _probe(loaded, heads, context.device)
    check_labels(samples, head_sizes, config.annotations)
    settings = run_settings(config, loaded)
    names = head_class_names(
        config.dataset, config.annotations, head_sizes, getattr(loaded.config, "id2label", None), config.classes
    )
    header = make_header(
        settings, batch_size=config.batch_size, workers=config.workers, device=context.device, world=context.world,
        class_names=names,
    )
    header["root"] = str(Path(config.root).resolve())  # where the clips are (not part of the run's identity)

    writer, logits, failure = None, None, None
    if context.is_main:  # only rank 0 touches the files; the others learn what is done from them
        try:
            writer = ResultsWriter(out, header, resume=resume or new_runs, new_runs=new_runs)
            if config.save_logits:
                logits = LogitsWriter(out, header["run"], writer.done)
        except ResultsError as error:
            failure = str(error)
    done = writer.done if writer else {}
    finished = writer.summaries[-1] if writer and writer.summaries else None
    failure, done_ids, finished = broadcast((failure, sorted(done), finished), context)
    if failure:
        raise ResultsError(failure)
    done_set = set(done_ids)
    remaining = [sample for sample in samples if sample.id not in done_set]
    try:
        if not remaining and finished is not None:
            return finished
        shard = remaining[context.rank :: context.world]
        steps = math.ceil(math.ceil(len(remaining) / context.world) / config.batch_size)
        dataset = ClipDataset(shard, loaded.sampling, loaded.preprocessing, config.decoder)
        loader = DataLoader(
            dataset, batch_size=config.batch_size, num_workers=config.workers, collate_fn=_collate_items
        )
        return score(
            loaded.model,
            _padded(loader, steps),
            heads=heads,
            header=header,
            writer=writer,
            logits=logits,
            records=dict(done),
            context=context,
            total=len(remaining),
            frames=loaded.sampling.frames,
            strict=config.strict,
            progress=config.progress,
        )
    finally:
        if writer is not None:
            writer.close()


def _padded(batches: Iterable[list[Item]], steps: int) -> Iterator[list[Item]]:
    """Exactly ``steps`` batches (empty ones after the last), so that every rank takes part in every gather."""
    batches = iter(batches)
    for _ in range(steps):
        yield next(batches, [])


def score(
    model: torch.nn.Module,
    batches: Iterable[list[Item]],
    *,
    heads: dict[str, int] | None,
    header: dict[str, Any],
    writer: ResultsWriter | None,
    records: dict[str, dict[str, Any]],
    logits: LogitsWriter | None = None,
    context: DistContext,
    total: int,
    frames: int,
    strict: bool = False,
    progress: bool = True,
    throughput: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The scoring loop of every evaluation: classify each batch of clips, write their lines, then the summary.

    ``batches`` come from decoded videos (:func:`evaluate`) or from tensors in memory
    (:func:`videotome.evaluation.tensors.evaluate_tensors`). Rank 0 gathers every rank's lines of each step and
    writes them (``writer`` is None on the other ranks); ``records`` holds the lines already in the file. With
    ``logits`` (rank 0 of a ``--save-logits`` run), each step's logits are written before its lines.
    ``throughput`` replaces the speed measured here (e.g. by an interleaved timing). Returns the summary on every
    rank.
    """
    rid, brief = header["run"], _brief(header["settings"])
    bar = tqdm(total=total, desc="eval", unit="clip", disable=not progress or not context.is_main, file=sys.stderr)
    model_clips, model_seconds, count = 0, 0.0, 0
    begin = time.perf_counter()
    for items in batches:
        failed = next((item for item in items if item["error"] is not None), None)
        if strict and failed is not None:
            raise EvaluationError(f"{failed['sample'].id}: {failed['error']} (--strict stops at the first bad video)")
        good = [item["pixels"] for item in items if item["error"] is None]
        batch_logits: dict[str, torch.Tensor] = {}
        if good:
            batch_logits, seconds = forward_batch(model, torch.stack(good).to(context.device), heads)
            model_clips, model_seconds = model_clips + len(good), model_seconds + seconds
        count += len(items)
        probabilities = {head: values.softmax(-1) for head, values in batch_logits.items()}
        good_ids = [item["sample"].id for item in items if item["error"] is None]
        gathered = gather((clip_records(items, probabilities, brief), clip_logits(good_ids, batch_logits)), context)
        if writer is not None:
            if logits is not None:
                logits.write({clip: values for _, part in gathered for clip, values in part.items()})
            lines = [{"type": "clip", "run": rid, **record} for part, _ in gathered for record in part]
            writer.write(lines)
            records.update((line["id"], line) for line in lines)
            bar.update(len(lines))
    bar.close()
    timings = gather((model_clips, model_seconds, count, time.perf_counter() - begin), context)
    summary = None
    if writer is not None:
        summary = {
            "type": "summary",
            "run": rid,
            "settings": brief,
            "metrics": compute_metrics(records.values()),
            "throughput": {**rates(timings, frames), **(throughput or {})},
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        writer.write([summary])
    return broadcast(summary, context)


def rates(timings: list[tuple[int, float, int, float]], frames: int) -> dict[str, Any]:
    """Model-only and end-to-end speed from each rank's (model clips, model seconds, clips, wall seconds); ranks
    run side by side, so their rates add up."""
    model_rate = sum(clips / seconds for clips, seconds, _, _ in timings if seconds > 0)
    wall = max(seconds for *_, seconds in timings)
    clips = sum(count for _, _, count, _ in timings)
    return {
        "model_clips_per_s": model_rate,
        "model_frames_per_s": model_rate * frames,
        "end_to_end_clips_per_s": clips / wall if wall > 0 else 0.0,
        "clips_timed": sum(count for count, *_ in timings),
        "world_size": len(timings),
    }
