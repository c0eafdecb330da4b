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
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import videotome

from ..heads import format_heads, logits_per_head, model_heads, parse_heads  # noqa: F401 (parse_heads: commands)
from ..loading import VIDEO_MODEL_TYPES, load_local_model, resolve_model_dir
from ..measure import synchronize
from .datasets import Sample, check_labels, class_names_from_id2label, load_samples
from .results import ResultsError, ResultsWriter, compute_metrics, run_id
from .video import (
    DecodeError,
    Preprocessing,
    SamplingConfig,
    check_decoder,
    load_preprocessing,
    model_sampling,
    preprocess,
    read_clip,
)

TOP_K = 5


class EvaluationError(RuntimeError):
    """An evaluation that cannot start or must stop (bad model, ``--strict`` failure)."""


@dataclass
class EvalConfig:
    """Everything ``videotome eval`` needs (``run_settings`` picks those that define a run's predictions)."""

    model: str
    dataset: str
    annotations: str
    root: str
    r: int | float = 0
    schedule: str = "constant"
    strategy: str = "merge"
    threshold: float | None = None
    prop_attn: bool | None = None
    divided: str = "per_frame"
    seed: int = 0
    frames: int | None = None
    sampling: str | None = None
    stride: int | None = None
    heads: str | None = None
    classes: str | None = None
    limit: int | None = None
    decoder: str = "pyav"
    batch_size: int = 8
    workers: int = 2
    device: str | None = None
    strict: bool = False
    progress: bool = True
    stop_after_batches: int | None = field(default=None, repr=False)


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


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int
    world: int
    device: torch.device


def read_model_config(directory: Path) -> dict[str, Any]:
    """Read a checkpoint's ``config.json`` as a plain dict."""
    path = directory / "config.json"
    if not path.is_file():
        raise EvaluationError(f"{directory} has no config.json; expected a Hugging Face checkpoint directory")
    return json.loads(path.read_text())


def load_model(config: EvalConfig, device: torch.device) -> LoadedModel:
    """Load the classifier (a transformers video model or the Motionformer) and its sampling, preprocessing and
    heads (flags first, then the checkpoint's own settings, then the family's defaults)."""
    try:
        directory = resolve_model_dir(config.model)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    model_type = read_model_config(directory).get("model_type", "")
    if model_type not in VIDEO_MODEL_TYPES:
        raise EvaluationError(f"{directory} holds a {model_type!r} model; expected one of {VIDEO_MODEL_TYPES}")
    model = load_local_model(directory)
    model_config = model.config
    sampling = model_sampling(model_config, config.frames, config.sampling, config.stride)
    image_size = getattr(model_config, "image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    preprocessing = load_preprocessing(directory, model_type, int(image_size))
    heads = model_heads(model_config, config.heads)
    return LoadedModel(model.to(device).eval(), directory, model_type, model_config, sampling, preprocessing, heads)


def run_settings(config: EvalConfig, loaded: LoadedModel) -> dict[str, Any]:
    """The settings that define a run's predictions (and so its identity in the results file)."""
    reduced = config.r != 0
    settings = {
        "model": str(loaded.directory),
        "model_type": loaded.model_type,
        "dataset": config.dataset,
        "annotations": str(Path(config.annotations).resolve()),
        "limit": config.limit,
        "r": config.r,
        "strategy": config.strategy if reduced else "none",
        "schedule": config.schedule if reduced else "none",
        "threshold": config.threshold if reduced else None,
        "prop_attn": config.prop_attn if reduced else None,
        "divided": config.divided if reduced else None,
        "seed": config.seed if reduced else None,
        "sampling": asdict(loaded.sampling),
        "preprocessing": loaded.preprocessing.to_dict(),
        "heads": format_heads(loaded.heads),
        "classes": config.classes,
        "decoder": config.decoder,
    }
    return json.loads(json.dumps(settings))  # as read back from the file (tuples become lists)


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def make_header(
    settings: dict[str, Any], *, batch_size: int, workers: int, device: torch.device, world: int = 1
) -> dict[str, Any]:
    """The first line of a run: settings, library versions and hardware."""
    return {
        "type": "header",
        "run": run_id(settings),
        "settings": settings,
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


def init_distributed(device: str | None) -> DistContext:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if world == 1:
        return DistContext(0, 1, torch.device(device or ("cuda" if use_cuda else "cpu")))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    target = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    return DistContext(dist.get_rank(), dist.get_world_size(), target)


def _broadcast(value: Any, context: DistContext) -> Any:
    """Rank 0's ``value`` on every rank."""
    if context.world == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _gather(value: Any, context: DistContext) -> list[Any]:
    """Every rank's ``value``, on rank 0 (other ranks get an empty list)."""
    if context.world == 1:
        return [value]
    boxes = [None] * context.world if context.rank == 0 else None
    dist.gather_object(value, boxes, dst=0)
    return boxes or []


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
            frames = read_clip(sample.path, self.sampling, sample.start, sample.end, self.decoder)
        except DecodeError as error:
            return {"sample": sample, "pixels": None, "error": str(error)}
        return {"sample": sample, "pixels": preprocess(frames, self.preprocessing), "error": None}


def _as_list(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DataLoader collate: keep items apart, so failed clips travel with the good ones."""
    return batch


def forward_batch(
    model: torch.nn.Module, pixels: torch.Tensor, heads: dict[str, int] | None
) -> tuple[dict[str, torch.Tensor], float]:
    """Run the model on a batch; return probabilities per head and the seconds the forward pass took."""
    synchronize(pixels.device)
    begin = time.perf_counter()
    with torch.inference_mode():
        output = model(pixel_values=pixels)
    synchronize(pixels.device)
    seconds = time.perf_counter() - begin
    return {head: logits.float().softmax(-1).cpu() for head, logits in logits_per_head(output, heads).items()}, seconds


def apply_reduction(model: torch.nn.Module, config: EvalConfig) -> None:
    """Patch the model with ``videotome.patch`` for r > 0 (r = 0 is the unmodified baseline)."""
    if config.r == 0:
        return
    videotome.patch(
        model,
        config.r,
        schedule=config.schedule,
        strategy=config.strategy,
        threshold=config.threshold,
        prop_attn=config.prop_attn,
        divided=config.divided,
        seed=config.seed,
    )


def clip_records(
    items: list[dict[str, Any]], probabilities: dict[str, torch.Tensor], brief: dict[str, Any]
) -> list[dict[str, Any]]:
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
        probabilities, _ = forward_batch(loaded.model, pixels, heads)
    except RuntimeError as error:
        raise EvaluationError(
            f"the model rejects clips of {loaded.sampling.frames} frames of {crop[0]}x{crop[1]} "
            f"(check --frames and the preprocessor config): {error}"
        ) from error
    return {head: probs.shape[-1] for head, probs in probabilities.items()}


def evaluate(config: EvalConfig, *, new_runs: bool = False, resume: bool = False, out: str | Path) -> dict[str, Any]:
    """Evaluate one model setting on one dataset into ``out``; return the run's summary (metrics, throughput).

    ``resume`` continues the run with the same settings; ``new_runs`` (sweeps) also appends a run to a file that
    holds others. Clips already in the file are skipped, so a resumed run ends with exactly one line per clip.
    """
    check_decoder(config.decoder)
    context = init_distributed(config.device)
    loaded = load_model(config, context.device)
    id2label = getattr(loaded.config, "id2label", None) or {}
    samples = load_samples(
        config.dataset, config.annotations, config.root, class_names_from_id2label(id2label), config.classes
    )
    samples = samples[: config.limit] if config.limit is not None else samples
    heads = loaded.heads
    apply_reduction(loaded.model, config)
    check_labels(samples, _probe(loaded, heads, context.device), config.annotations)
    settings = run_settings(config, loaded)
    header = make_header(
        settings, batch_size=config.batch_size, workers=config.workers, device=context.device, world=context.world
    )

    writer, failure = None, None
    if context.rank == 0:  # only rank 0 touches the file; the others learn what is done from it
        try:
            writer = ResultsWriter(out, header, resume=resume or new_runs, new_runs=new_runs)
        except ResultsError as error:
            failure = str(error)
    done = writer.done if writer else {}
    finished = writer.summaries[-1] if writer and writer.summaries else None
    failure, done_ids, finished = _broadcast((failure, sorted(done), finished), context)
    if failure:
        raise ResultsError(failure)
    done_set = set(done_ids)
    remaining = [sample for sample in samples if sample.id not in done_set]
    try:
        if not remaining and finished is not None:
            return finished
        return _run(config, loaded, context, remaining, heads, header, writer, dict(done))
    finally:
        if writer is not None:
            writer.close()


def _run(
    config: EvalConfig,
    loaded: LoadedModel,
    context: DistContext,
    remaining: list[Sample],
    heads: dict[str, int] | None,
    header: dict[str, Any],
    writer: ResultsWriter | None,
    records: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Classify this rank's shard of ``remaining``; rank 0 writes every step's records, then the summary."""
    rid, settings = header["run"], header["settings"]
    shard = remaining[context.rank :: context.world]
    steps = math.ceil(math.ceil(len(remaining) / context.world) / config.batch_size)
    dataset = ClipDataset(shard, loaded.sampling, loaded.preprocessing, config.decoder)
    loader = DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers, collate_fn=_as_list)
    batches = iter(loader)
    brief = {key: settings[key] for key in ("model", "dataset", "r", "strategy", "schedule")}
    bar = tqdm(
        total=len(remaining),
        desc="eval",
        unit="clip",
        disable=not config.progress or context.rank != 0,
        file=sys.stderr,
    )
    model_clips, model_seconds = 0, 0.0
    begin = time.perf_counter()
    for step in range(steps):
        items = next(batches, [])
        failed = next((item for item in items if item["error"] is not None), None)
        if config.strict and failed is not None:
            raise EvaluationError(f"{failed['sample'].id}: {failed['error']} (--strict stops at the first bad video)")
        good = [item["pixels"] for item in items if item["error"] is None]
        probabilities: dict[str, torch.Tensor] = {}
        if good:
            probabilities, seconds = forward_batch(loaded.model, torch.stack(good).to(context.device), heads)
            model_clips, model_seconds = model_clips + len(good), model_seconds + seconds
        gathered = _gather(clip_records(items, probabilities, brief), context)
        if writer is not None:
            lines = [{"type": "clip", "run": rid, **record} for part in gathered for record in part]
            writer.write(lines)
            records.update((line["id"], line) for line in lines)
            bar.update(len(lines))
            if config.stop_after_batches is not None and step + 1 >= config.stop_after_batches:
                os._exit(3)  # simulated crash for tests: no cleanup, like a killed process
    bar.close()
    timings = _gather((model_clips, model_seconds, len(shard), time.perf_counter() - begin), context)
    summary = None
    if writer is not None:
        summary = {
            "type": "summary",
            "run": rid,
            "settings": brief,
            "metrics": compute_metrics(records.values()),
            "throughput": _throughput(timings, loaded.sampling.frames),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        writer.write([summary])
    return _broadcast(summary, context)


def _throughput(timings: list[tuple[int, float, int, float]], frames: int) -> dict[str, Any]:
    """Model-only and end-to-end speed over all ranks (ranks run side by side, so their rates add up)."""
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
