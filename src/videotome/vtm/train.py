"""Training and evaluation of the VTM network on LVU, Breakfast, COIN or the synthetic task.

AdamW (lr 1e-3, weight decay 0.01), batch 16, a cosine schedule after a linear warm-up, stepped per batch.
Every epoch ends with a line in ``{out}/log.jsonl`` and a checkpoint ``{out}/last.pt`` (model, optimizer, schedule,
epoch, random state; loaded tensor-only). Training into an ``out`` that holds an unfinished run continues it where it
stopped, with the same batches and random draws as an uninterrupted one, and drops log lines of epochs after the
checkpoint, so the log has one line per epoch. A finished run (as many epochs as configured) is refused unless
``overwrite=True``, which starts afresh; so is a run with another configuration (only ``epochs``, ``out`` and
``workers`` may change: more epochs extend a finished run). Several processes
(``torchrun --nproc-per-node N -m videotome vtm train ...``) train with DistributedDataParallel on CPUs, over
gloo (:mod:`videotome.distributed`), even where a GPU is visible; the batch size is per process.

Training takes one random window of ``frames`` frames per video per epoch (LVU) or one random frame per segment
(Breakfast, COIN). Evaluation on LVU slides a ``frames``-frame window over the whole video with stride
``eval_stride`` (1 in the paper), sums the class probabilities (averages the predictions of a regression) and scores
the sum; other datasets take one view per video.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from videotome.distributed import barrier, init_distributed
from videotome.errors import VideotomeError
from videotome.vtm.data import (
    LVU_TASKS,
    SEGMENT_TASKS,
    FeatureVideos,
    SyntheticSaliency,
    TaskSpec,
    read_lvu_csv,
    read_segment_csv,
    sliding_starts,
    window_indices,
)
from videotome.vtm.model import VideoTokenMerger, VTMConfig, vtm_loss

DATASETS = ("synthetic", "lvu", "breakfast", "coin")
CHECKPOINT = "last.pt"
LOG = "log.jsonl"
RESUMABLE_CHANGES = ("epochs", "out", "workers")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config")
SYNTHETIC_SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}
#: model settings that depend on the dataset, where the command line leaves them out
DATASET_MODEL_DEFAULTS: dict[str, dict[str, object]] = {
    "lvu": {"windows": (6, 30, 60)},
    "breakfast": {"windows": (8, 32, 64)},
    "coin": {"windows": (8, 32, 64)},
    "synthetic": {"windows": (2, 6, 12), "channels": (32, 32, 32), "num_heads": 4},
}


@dataclass
class TrainConfig:
    """What to train on and how. ``model`` holds the architecture; ``in_channels`` / ``num_outputs`` are set from
    the data."""

    dataset: str = field(default="synthetic", metadata={"help": "features to train on", "choices": DATASETS})
    out: str = field(default="runs/vtm", metadata={"help": "checkpoint and log directory"})
    root: str | None = field(default=None, metadata={"help": "split CSVs (LVU: the lvu_1.0 directory)"})
    features: str | None = field(default=None, metadata={"help": "directory of {video_id}.safetensors files"})
    task: str | None = field(default=None, metadata={"help": "LVU task, e.g. scene, director, like_ratio"})
    frames: int | None = field(
        default=None, metadata={"help": "frames per sample (60 LVU, 64 Breakfast/COIN, 12 synthetic)"}
    )
    epochs: int = field(default=70, metadata={"help": "training epochs"})
    warmup_epochs: int = field(default=10, metadata={"help": "epochs of linear warm-up before the cosine decay"})
    batch_size: int = field(default=16, metadata={"help": "samples per step, per process"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    aux_loss_weight: float = field(default=1.0, metadata={"help": "weight of the auxiliary path's loss"})
    seed: int = field(default=0, metadata={"help": "seed of the weights, the batches and the random draws"})
    workers: int = field(default=0, metadata={"help": "data loader processes"})
    eval_stride: int = field(default=1, metadata={"help": "LVU sliding-window stride in evaluation"})
    eval_split: str = field(default="val", metadata={"help": "split evaluated after each epoch",
                                                      "choices": ("val", "test")})
    max_steps_per_epoch: int | None = field(default=None, metadata={"help": "cut epochs short (smoke tests)"})
    synthetic_videos: int = field(default=1024, metadata={"help": "synthetic training videos"})
    synthetic_eval_videos: int = field(default=512, metadata={"help": "synthetic validation / test videos"})
    model: VTMConfig = field(default_factory=VTMConfig, metadata={"help": "model"})

    def to_dict(self) -> dict:
        """Plain data for a checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        data["model"] = VTMConfig(**data["model"])
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def task_spec(config: TrainConfig) -> TaskSpec:
    """Classes or regression of the configured dataset / task."""
    if config.dataset == "synthetic":
        return TaskSpec(SyntheticSaliency(1).num_classes)
    if config.dataset == "lvu":
        if config.task is None:
            raise ValueError(f"--dataset lvu needs --task, one of {sorted(LVU_TASKS)}")
        if config.task not in LVU_TASKS:
            raise ValueError(f"--task {config.task!r} is not an LVU task; expected one of {sorted(LVU_TASKS)}")
        return LVU_TASKS[config.task]
    if config.dataset in SEGMENT_TASKS:
        return SEGMENT_TASKS[config.dataset]
    raise ValueError(f"dataset={config.dataset!r} is not one of {DATASETS}")


def default_frames(dataset: str) -> int:
    """Frames per sample: 60 for LVU (1 fps), 64 segments for Breakfast / COIN, 12 for the synthetic task."""
    return {"lvu": 60, "breakfast": 64, "coin": 64}.get(dataset, 12)


def build_dataset(config: TrainConfig, split: str, train: bool) -> Dataset:
    """The dataset of one split; evaluation on LVU returns whole videos for sliding windows."""
    if config.dataset == "synthetic":
        count = config.synthetic_videos if split == "train" else config.synthetic_eval_videos
        return SyntheticSaliency(count, frames=config.frames or 12, seed=SYNTHETIC_SPLIT_SEEDS[split])
    if config.root is None or config.features is None:
        raise ValueError(f"dataset={config.dataset!r} needs --root (split CSVs) and --features (feature files)")
    root = Path(config.root)
    spec = task_spec(config)
    if config.dataset == "lvu":
        rows = read_lvu_csv(root / config.task / f"{split}.csv", config.task)
    else:
        rows = read_segment_csv(root / f"{split}.csv", spec.num_outputs)
    return FeatureVideos(
        rows,
        config.features,
        frames=config.frames or default_frames(config.dataset),
        sampling="window" if config.dataset == "lvu" else "segments",
        train=train,
        whole=config.dataset == "lvu" and not train,
        use_motion=config.model.partition == "motion" and config.model.merge,
        seed=config.seed,
    )


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def save_checkpoint(path: Path, model: nn.Module, optimizer, scheduler, epoch: int, config: TrainConfig) -> None:
    """Write the state after ``epoch`` completed epochs, atomically."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": torch.get_rng_state(),
        "config": config.to_dict(),
    }
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's state, loaded tensor-only (``weights_only=True``): a file holding anything but tensors and
    plain data (such as a pickle that would run code) is refused, nothing in it is executed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise VideotomeError(
            f"checkpoint {path} refused: it holds objects other than tensors and plain data (or is not a torch file)"
        ) from None
    except (RuntimeError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VideotomeError(f"checkpoint {path} is not a readable torch file: {reason}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise VideotomeError(f"checkpoint {path} lacks {', '.join(missing)}; expected the last.pt of vtm train")
    return state


def load_model(checkpoint: str | Path) -> tuple[VideoTokenMerger, TrainConfig]:
    """The trained model (eval mode) and its training configuration from a checkpoint (see :func:`read_checkpoint`)."""
    state = read_checkpoint(checkpoint)
    config = TrainConfig.from_dict(state["config"])
    model = VideoTokenMerger(config.model)
    model.load_state_dict(state["model"])
    return model.eval(), config


def prepare_config(config: TrainConfig) -> TrainConfig:
    """Fill in the data-dependent model fields (input channels, outputs) and the frame count, checking the windows
    against the frames first."""
    spec = task_spec(config)
    config.frames = config.frames or default_frames(config.dataset)
    config.model.check_frames(config.frames)
    if config.dataset == "synthetic":
        in_channels = SyntheticSaliency(1).channels
    else:
        in_channels = build_dataset(config, "train", train=True)[0]["tokens"].shape[-1]
    settings = asdict(config.model)
    settings.update(in_channels=in_channels, num_outputs=spec.num_outputs)
    config.model = VTMConfig(**settings)
    return config


def config_differences(saved: TrainConfig, current: TrainConfig) -> list[str]:
    """``name: saved -> current`` for each setting that differs, except :data:`RESUMABLE_CHANGES`."""

    def settings(config: TrainConfig) -> dict:
        data = config.to_dict()
        model = data.pop("model")
        return {**data, **{f"model.{name}": value for name, value in model.items()}}

    before, after = settings(saved), settings(current)
    return [f"{name}: {before[name]!r} -> {after[name]!r}" for name in before
            if name not in RESUMABLE_CHANGES and before[name] != after[name]]


def previous_run(config: TrainConfig, overwrite: bool, is_main: bool) -> dict | None:
    """The checkpoint in ``config.out`` to continue from, or None to start afresh (``overwrite`` removes the old
    checkpoint and log, on the main process). A finished run, or one with another configuration, is refused."""
    out = Path(config.out)
    checkpoint = out / CHECKPOINT
    if overwrite:
        if is_main:
            checkpoint.unlink(missing_ok=True)
            (out / LOG).unlink(missing_ok=True)
        return None
    if not checkpoint.exists():
        return None
    state = read_checkpoint(checkpoint)
    differences = config_differences(TrainConfig.from_dict(state["config"]), config)
    if differences:
        raise VideotomeError(f"--out {out} holds a run with another configuration ({'; '.join(differences)}); "
                             "choose another --out, or --overwrite to replace it")
    if state["epoch"] >= config.epochs:
        raise VideotomeError(f"--out {out} holds a finished run ({state['epoch']} epochs, --epochs {config.epochs}); "
                             "--overwrite trains it again, more --epochs continue it")
    return state


def trim_log(path: Path, epochs: int) -> None:
    """Keep the log lines of the first ``epochs`` epochs: a resumed run writes the later ones again."""
    if not path.exists():
        return
    lines = []
    for line in filter(str.strip, path.read_text().splitlines()):
        try:
            epoch = json.loads(line)["epoch"]
        except (ValueError, KeyError, TypeError):
            raise VideotomeError(
                f"{path} holds {line[:80]!r}, not an epoch's JSON line; --overwrite replaces it"
            ) from None
        if epoch <= epochs:
            lines.append(line)
    partial = path.with_suffix(".partial")
    partial.write_text("".join(line + "\n" for line in lines))
    partial.replace(path)


def train(config: TrainConfig, overwrite: bool = False) -> dict:
    """Train, evaluating on ``config.eval_split`` after every epoch; returns the last evaluation.

    An unfinished run in ``config.out`` is continued; ``overwrite`` starts afresh over a finished (or any) one.
    """
    context = init_distributed("cpu")  # the network trains on CPUs, over gloo
    torch.manual_seed(config.seed)
    config = prepare_config(config)
    spec = task_spec(config)
    out = Path(config.out)
    state = previous_run(config, overwrite, context.is_main)
    start_epoch = 0 if state is None else state["epoch"]
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trim_log(out / LOG, start_epoch)
    dataset = build_dataset(config, "train", train=True)
    sampler = DistributedSampler(dataset, num_replicas=context.world, rank=context.rank, shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers)
    steps_per_epoch = min(len(loader), config.max_steps_per_epoch or len(loader))
    model = VideoTokenMerger(config.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total, warmup = config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
    network = DistributedDataParallel(model) if context.world > 1 else model
    metrics: dict = {}
    for epoch in range(start_epoch, config.epochs):
        sampler.set_epoch(epoch)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loss = train_epoch(network, loader, optimizer, scheduler, config, spec, steps_per_epoch, context.is_main, epoch)
        if context.is_main:
            metrics = {"epoch": epoch + 1, "train_loss": loss, **evaluate(model, config, config.eval_split)}
            with (out / LOG).open("a") as log:
                log.write(json.dumps(metrics) + "\n")
            save_checkpoint(out / CHECKPOINT, model, optimizer, scheduler, epoch + 1, config)
        barrier(context)
    return metrics


def train_epoch(
    network: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    config: TrainConfig,
    spec: TaskSpec,
    steps: int,
    show: bool,
    epoch: int,
) -> float:
    """One epoch of at most ``steps`` batches; returns the mean loss."""
    network.train()
    total = 0.0
    batches = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not show, leave=False)
    for step, batch in enumerate(batches):
        if step >= steps:
            break
        output = network(batch["tokens"], batch.get("motion"))
        loss = vtm_loss(output, batch["label"], spec.regression, config.aux_loss_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        batches.set_postfix(loss=f"{loss.item():.4f}")
    return total / max(1, min(steps, len(loader)))


@torch.no_grad()
def predict_video(model: VideoTokenMerger, sample: dict[str, Tensor], frames: int, stride: int, regression: bool,
                  chunk: int = 8) -> Tensor:
    """Sum of class probabilities (mean prediction for a regression) over sliding windows of a whole video."""
    num_frames = sample["tokens"].shape[0]
    total = None
    starts = sliding_starts(num_frames, frames, stride)
    for first in range(0, len(starts), chunk):
        index = torch.stack([window_indices(num_frames, s, frames) for s in starts[first : first + chunk]])
        motion = sample.get("motion")
        logits = model(sample["tokens"][index], None if motion is None else motion[index]).logits
        scores = logits if regression else logits.softmax(dim=-1)
        total = scores.sum(0) if total is None else total + scores.sum(0)
    return total / len(starts) if regression else total


@torch.no_grad()
def evaluate(model: VideoTokenMerger, config: TrainConfig, split: str) -> dict[str, float]:
    """Accuracy (classification) or mean squared error (regression) on a split."""
    model.eval()
    spec = task_spec(config)
    dataset = build_dataset(config, split, train=False)
    predictions, labels = [], []
    if isinstance(dataset, FeatureVideos) and dataset.whole:
        for index in tqdm(range(len(dataset)), desc=f"eval {split}", leave=False):
            sample = dataset[index]
            predictions.append(predict_video(model, sample, config.frames, config.eval_stride, spec.regression))
            labels.append(sample["label"])
        predictions, labels = torch.stack(predictions), torch.stack(labels)
    else:
        for batch in DataLoader(dataset, batch_size=config.batch_size, num_workers=config.workers):
            predictions.append(model(batch["tokens"], batch.get("motion")).logits)
            labels.append(batch["label"])
        predictions, labels = torch.cat(predictions), torch.cat(labels)
    return split_metric(predictions, labels, spec.regression, split)


def split_metric(predictions: Tensor, labels: Tensor, regression: bool, split: str) -> dict[str, float]:
    """``{split}_accuracy`` from class scores, or ``{split}_mse`` from predicted values."""
    if regression:
        return {f"{split}_mse": float(((predictions.squeeze(-1) - labels) ** 2).mean())}
    return {f"{split}_accuracy": float((predictions.argmax(-1) == labels.long()).float().mean())}
