"""Training the testbed checkpoints: AdamW on freshly generated clips, loss = CE(verb) + CE(noun).

Every step draws a new batch from the generator (seeded by the run's seed and the step), or from a pool generated
once from the seed and reshuffled every pass (``pool``), so a resumed run continues exactly where it stopped. The
resumable state (``training_state.pt``: weights, optimiser, step, elapsed time) is saved every ``save_every`` steps
and removed once the run finishes. The finished model is written with ``save_checkpoint`` (safetensors, config.json
and the preprocessor config) plus ``testbed.json``: the command, seed, accuracy and time. A finished run in the
output directory is only replaced when asked (``overwrite``).
"""

from __future__ import annotations

import json
import math
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..options import option
from .data import HEADS, Clips, ClipSpec, generate, validation_set
from .models import (
    ARCHITECTURES,
    METADATA,
    build_model,
    head_logits,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
)

STATE_FILE = "training_state.pt"
#: seed offset per step, so every step's batch is its own generator seed
STEP_SEED_STRIDE = 1_000_003


@dataclass
class TrainConfig:
    """A training run; every field is a ``videotome testbed train`` flag (``threads`` is the ``--threads`` that every
    command has)."""

    arch: str = option(help="testbed architecture", choices=ARCHITECTURES)
    out: str = option(help="checkpoint directory (resumes from its training_state.pt)")
    steps: int = option(800, "optimiser steps")
    batch_size: int = option(64, "clips per step")
    lr: float = option(1.5e-3, "peak learning rate (linear warm-up, then cosine decay)")
    weight_decay: float = option(0.05, "AdamW weight decay")
    warmup: int = option(50, "warm-up steps")
    seed: int = option(0, "seed of the weights and of every step's clips")
    eval_clips: int = option(512, "validation clips scored at the end")
    save_every: int = option(50, "steps between resumable states")
    pool: int = option(0, "clips generated once and reused (0: fresh every step)")
    threads: int | None = option(None, cli=False)
    init: str | None = option(None, "start from this checkpoint's weights (fine-tuning)")

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; expected one of {ARCHITECTURES}")
        for name in ("steps", "batch_size", "eval_clips", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.init is not None and not (Path(self.init) / "config.json").is_file():
            raise ValueError(f"init must be a testbed checkpoint directory (with config.json), got {self.init!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 (or None: torch's choice), got {self.threads}")
        if self.pool and self.pool < self.batch_size:
            raise ValueError(f"pool must be 0 (fresh clips every step) or at least batch_size, got {self.pool}")

    def command(self) -> str:
        """The ``videotome testbed train`` command that reproduces this run, every setting spelled out."""
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in asdict(self).items() if value is not None]
        return shlex.join(["videotome", "testbed", "train", *flags])


class Batches:
    """The training batch of each step: freshly generated (``pool = 0``), or drawn from a pool of ``pool`` clips
    generated once and reshuffled every pass (cheaper: generation costs about a third of a step)."""

    def __init__(self, config: TrainConfig, spec: ClipSpec) -> None:
        self.config, self.spec = config, spec
        self.clips = generate("train", config.pool, config.seed, spec) if config.pool else None

    def __call__(self, step: int) -> Clips:
        config = self.config
        if self.clips is None:
            return generate("train", config.batch_size, config.seed * STEP_SEED_STRIDE + step, self.spec)
        per_pass = config.pool // config.batch_size
        epoch, position = divmod(step, per_pass)
        order = torch.randperm(config.pool, generator=torch.Generator().manual_seed(config.seed * 7919 + epoch))
        chosen = order[position * config.batch_size : (position + 1) * config.batch_size]
        return self.clips.take(chosen)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def loss_and_hits(model: torch.nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Summed cross-entropy of the verb and noun heads, and each head's number of correct predictions."""
    logits = head_logits(model, pixels)
    loss = sum(F.cross_entropy(logits[head], labels[:, index]) for index, head in enumerate(HEADS))
    hits = {head: int((logits[head].argmax(-1) == labels[:, index]).sum()) for index, head in enumerate(HEADS)}
    return loss, hits


@torch.inference_mode()
def validation_accuracy(model: torch.nn.Module, clips: int, batch_size: int = 128) -> dict[str, float]:
    """Verb, noun and action accuracy on the first ``clips`` validation clips."""
    was_training = model.training
    model.eval()
    data = validation_set(clips)
    pixels, labels = data.pixels(), data.labels()
    right = {"verb": 0, "noun": 0, "action": 0}
    for start in range(0, clips, batch_size):
        logits = head_logits(model, pixels[start : start + batch_size])
        truth = labels[start : start + batch_size]
        verb = logits["verb"].argmax(-1) == truth[:, 0]
        noun = logits["noun"].argmax(-1) == truth[:, 1]
        right["verb"] += int(verb.sum())
        right["noun"] += int(noun.sum())
        right["action"] += int((verb & noun).sum())
    model.train(was_training)
    return {name: count / clips for name, count in right.items()}


def _load_state(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> dict:
    """Restore a resumable state written by the same configuration."""
    state = torch.load(path, weights_only=True)
    saved = json.loads(state["config"])
    if saved["arch"] != config.arch or saved["seed"] != config.seed or saved["batch_size"] != config.batch_size:
        raise ValueError(
            f"{path} was written by a run with arch={saved['arch']}, seed={saved['seed']}, batch_size="
            f"{saved['batch_size']}; resuming needs the same, got {config.arch}, {config.seed}, {config.batch_size}"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return {"step": int(state["step"]), "elapsed": float(state["elapsed"])}


def _save_state(path: Path, model, optimizer, config: TrainConfig, step: int, elapsed: float) -> None:
    """Write the resumable state atomically (a killed run never leaves a torn file)."""
    partial = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "elapsed": elapsed,
            "config": json.dumps(asdict(config)),
        },
        partial,
    )
    partial.replace(path)


def _start_from(model: torch.nn.Module, directory: str) -> dict[str, Any]:
    """Load a finished checkpoint's weights into ``model`` (fine-tuning) and return its training record."""
    trained = load_checkpoint(directory)
    if type(trained) is not type(model):
        raise ValueError(f"init checkpoint {directory} holds a {type(trained).__name__}, not a {type(model).__name__}")
    model.load_state_dict(trained.state_dict())
    return read_metadata(directory)


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse to train over a finished run (config.json and testbed.json, no resumable state) unless ``overwrite``;
    an unfinished one is resumed."""
    finished = (out / "config.json").is_file() and (out / METADATA).is_file() and not (out / STATE_FILE).exists()
    if finished and not overwrite:
        arch = read_metadata(out).get("arch", "unknown")
        raise ValueError(f"{out} holds a finished {arch} run; pass --overwrite to replace it, or choose another --out")


def train(config: TrainConfig, *, overwrite: bool = False) -> dict[str, Any]:
    """Train (or resume) one testbed model into ``config.out``; return its ``testbed.json`` record.

    A finished run already in ``config.out`` is refused unless ``overwrite``.
    """
    out = Path(config.out)
    check_output(out, overwrite)
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    spec = ClipSpec()
    model = build_model(config.arch, spec)
    parent = _start_from(model, config.init) if config.init else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state_path = out / STATE_FILE
    progress = {"step": 0, "elapsed": 0.0}
    if state_path.is_file():
        progress = _load_state(state_path, model, optimizer, config)
    batches = Batches(config, spec)
    model.train()
    bar = tqdm(total=config.steps, initial=progress["step"], desc=f"train {config.arch}", unit="step")
    begin = time.perf_counter() - progress["elapsed"]
    for step in range(progress["step"], config.steps):
        batch = batches(step)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        loss, hits = loss_and_hits(model, batch.pixels(), batch.labels())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", **{h: f"{n / config.batch_size:.2f}" for h, n in hits.items()})
        if (step + 1) % config.save_every == 0 or step + 1 == config.steps:
            _save_state(state_path, model, optimizer, config, step + 1, time.perf_counter() - begin)
    bar.close()
    seconds = time.perf_counter() - begin
    accuracy = validation_accuracy(model, config.eval_clips)
    model.eval()
    save_checkpoint(model, out)
    record = {
        "arch": config.arch,
        "command": config.command(),
        "config": asdict(config),
        "clip_spec": asdict(spec),
        "train_seconds": round(seconds, 1),
        "torch_threads": torch.get_num_threads(),
        "validation_clips": config.eval_clips,
        "validation_accuracy": accuracy,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    if parent is not None:
        record["init_record"] = parent
        earlier = parent.get("total_train_seconds", parent.get("train_seconds", 0.0))  # 0 without a record
        record["total_train_seconds"] = round(seconds + earlier, 1)
    (out / METADATA).write_text(json.dumps(record, indent=2) + "\n")
    state_path.unlink()  # finished: the package keeps only the model, its config and this record
    return record

