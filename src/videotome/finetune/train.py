"""Fine-tuning on Hugging Face ``Trainer``: checks, heads, the Trainer subclass and the run.

``Trainer`` (with ``accelerate``) does the data-parallel training under torchrun, mixed precision, gradient
accumulation, checkpoint rotation, exact resumption, logging and the progress bar. Ours are the recipes
(:mod:`.recipes`), the video datasets (:mod:`.data`), the heads, the loss over them, and the harness's metrics.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VideotomeError
from ..heads import format_heads, heads_text, logits_per_head, model_heads, parse_heads
from ..loading import SETTINGS_KEY, quiet_loading, stored_settings
from ..options import check_at_least, option
from ..plan import MergeSettings
from ..evaluation.datasets import (
    DATASETS,
    Sample,
    check_annotation_file,
    check_labels,
    class_names_from_id2label,
    head_class_names,
    load_samples,
    read_class_list,
)
from ..evaluation.harness import apply_reduction, load_model, model_directory, read_model_config
from ..evaluation.results import compute_metrics
from ..evaluation.video import DECODERS
from .data import FAILED, Augmentation, EpochSampler, VideoClips, collate, crop_side
from .recipes import OPTIMIZERS, RECIPES, SCHEDULES, Recipe

PRECISIONS = ("fp32", "bf16", "fp16")
FLIP_MODES = ("auto", "on", "off")
#: EPIC-KITCHENS-100's heads, when the annotations are EPIC's and ``--heads`` is not given
EPIC_HEADS = {"verb": 97, "noun": 300}
LOG = "log.jsonl"
CURVE = "curve.png"
#: parameters of a classifier's head(s), left out when the label space changes (transformers' ``classifier``, the
#: Motionformer's ``head`` or ``head0``, ``head1``, ...)
HEAD_PARAMETER = re.compile(r"^(classifier|head\d*)\.")


class FinetuneError(VideotomeError, ValueError):
    """A fine-tuning run that cannot start (bad input, a state to change)."""


@dataclass
class FinetuneConfig:
    """Everything ``videotome finetune`` needs; each field is one of its flags. The recipe fields left unset take
    the recipe's values."""

    model: str = option(help="checkpoint directory to start from (or a Hub id already in the local cache)")
    dataset: str = option(help="annotation format", choices=DATASETS)
    root: str = option(help="folder the videos are in")
    annotations: str = option(help="annotation file of the training split")
    val_annotations: str = option(help="annotation file of the validation split")
    out: str = option(help="output folder: checkpoints/, best/, final/, log.jsonl, curve.png")
    val_root: str | None = option(None, "folder the validation videos are in (default: --root)")
    recipe: str | None = option(None, "hyperparameter preset (default: the model's family)", choices=tuple(RECIPES))
    force_recipe: bool = option(False, "use --recipe on a model of another family (a warning, not an error)")
    heads: str | None = option(None, "the heads to train, e.g. verb:97,noun:300 (default: the model's, or EPIC's "
                               "for epic100); a new label space gets new heads", parse=heads_text)
    classes: str | None = option(None, "class list (k400: names, one a line or JSON; ssv2: labels.json)")
    epochs: int | None = option(None, "epochs (default: the recipe's)")
    lr: float | None = option(None, "base learning rate (default: the recipe's)")
    batch_size: int | None = option(None, "global batch, split over processes and --grad-accum (default: the "
                                    "recipe's)")
    grad_accum: int = option(1, "gradient accumulation steps")
    optimizer: str | None = option(None, "optimizer (default: the recipe's)", choices=OPTIMIZERS)
    momentum: float | None = option(None, "SGD momentum, or AdamW's first beta (default: the recipe's)")
    weight_decay: float | None = option(None, "weight decay (default: the recipe's)")
    lr_schedule: str | None = option(None, "learning-rate schedule (default: the recipe's)", choices=SCHEDULES)
    warmup_epochs: float | None = option(None, "cosine: linear warm-up epochs from 0 (default: the recipe's)")
    lr_steps: tuple[int, ...] | None = option(None, "step: the epochs where the rate changes, e.g. 0 11 14")
    lr_rates: tuple[float, ...] | None = option(None, "step: the rate multiples from those epochs, e.g. 1 0.1 0.01")
    merge: MergeSettings = field(default_factory=MergeSettings,
                                 metadata={"help": "token merging while training (recorded in the checkpoint)"})
    precision: str = option("fp32", "training precision (fp16: CUDA only)", choices=PRECISIONS)
    flip: str = option("auto", "horizontal flip; auto: off for ssv2 and when a class name says left or right",
                       choices=FLIP_MODES)
    frames: int | None = option(None, "frames per clip (default: the model's)")
    decoder: str = option("pyav", "video decoder (decord only if installed)", choices=DECODERS)
    workers: int = option(2, "decoding worker processes per training process")
    training_seed: int = option(0, "seed of the new heads, the clip order and the augmentation")
    save_steps: int | None = option(None, "also keep a checkpoint every N optimizer steps (default: each epoch)")
    keep_checkpoints: int = option(2, "checkpoints kept in OUT/checkpoints (the oldest are removed)")
    resume: bool = option(False, "continue the run in --out from its last checkpoint")
    progress: bool = option(True, "hide the progress bar", flag="--no-progress")

    def __post_init__(self) -> None:
        check_at_least(self, 1, "epochs", "batch_size", "grad_accum", "save_steps", "keep_checkpoints", "frames")
        check_at_least(self, 0, "workers")

    def recipe_for(self, model_type: str) -> Recipe:
        """The recipe (``--recipe``, else the family's) with every recipe flag given replacing its value; a recipe
        of another family is refused unless ``force_recipe`` (then warned about)."""
        name = self.recipe or model_type
        if name not in RECIPES:
            raise FinetuneError(f"no recipe for {model_type!r} models; pass --recipe one of {tuple(RECIPES)}")
        if name != model_type:
            message = f"--recipe {name} is for {name} models but {self.model} is a {model_type} model"
            if not self.force_recipe:
                raise FinetuneError(f"{message}; pass --force-recipe to use it anyway")
            print(f"videotome finetune: warning: {message} (--force-recipe)", file=sys.stderr)
        overrides = {"batch_size": self.batch_size, "lr": self.lr, "epochs": self.epochs, "optimizer": self.optimizer,
                     "momentum": self.momentum, "weight_decay": self.weight_decay, "schedule": self.lr_schedule,
                     "warmup_epochs": self.warmup_epochs, "steps": self.lr_steps, "rates": self.lr_rates}
        return replace(RECIPES[name], **{key: value for key, value in overrides.items() if value is not None})


def current_heads(config: Any) -> dict[str, int]:
    """The heads a classifier has: those its config stores, the Motionformer's ``head_sizes``, else one ``class``
    head of ``num_labels``."""
    heads = model_heads(config)
    if heads:
        return heads
    if getattr(config, "head_sizes", None):
        return dict(zip(config.resolved_head_names, config.head_sizes))
    return {"class": config.num_labels}


def dataset_class_names(config: FinetuneConfig, heads: dict[str, int]) -> dict[str, list[str]]:
    """Each head's class names as the dataset names them (Kinetics' ``--classes``, Something-Something's
    ``labels.json``, EPIC-KITCHENS' class lists beside the annotations); heads without a list are left out."""
    return head_class_names(config.dataset, config.annotations, heads, None, config.classes)


def target_heads(config: FinetuneConfig, model_config: Any, samples: list[Sample]) -> dict[str, int]:
    """The heads to train: ``--heads``; else the model's when they cover the annotations' heads; else EPIC's for
    epic100, or one head over the dataset's class list (Something-Something, Kinetics with ``--classes``)."""
    if config.heads:
        return parse_heads(config.heads)
    have = current_heads(model_config)
    wanted = {head for sample in samples for head in sample.labels}
    if config.dataset == "epic100" and not wanted <= set(have):
        return dict(EPIC_HEADS)
    listed = None
    if config.dataset == "ssv2":
        listed = config.classes or Path(config.annotations).with_name("labels.json")
    elif config.dataset == "k400" and config.classes:
        listed = config.classes
    if listed is not None:
        return {"class": len(read_class_list(listed))}
    if wanted <= set(have):
        return have
    raise FinetuneError(f"the annotations have heads {sorted(wanted)} but the model's are {format_heads(have)}; "
                        f"pass --heads NAME:SIZE,... (e.g. verb:97,noun:300)")


def id2label(heads: dict[str, int], names: dict[str, list[str]]) -> dict[int, str]:
    """A config's ``id2label`` over the concatenated heads: ``head: name`` (a lone ``class`` head: the name)."""
    labels, offset = {}, 0
    for head, size in heads.items():
        own = names.get(head) or [str(i) for i in range(size)]
        for index in range(size):
            labels[offset + index] = own[index] if list(heads) == ["class"] else f"{head}: {own[index]}"
        offset += size
    return labels


def with_heads(model: torch.nn.Module, heads: dict[str, int], names: dict[str, list[str]],
               seed: int) -> torch.nn.Module:
    """The model with new heads, initialised fresh (seeded), the rest of its weights kept; the config records the
    heads (``SETTINGS_KEY``) and their ``id2label``."""
    config = copy.deepcopy(model.config)
    if config.model_type == "motionformer" and len(heads) > 1:
        config.head_sizes, config.head_names = list(heads.values()), list(heads)
    elif config.model_type == "motionformer":
        config.head_sizes = config.head_names = None
    config.id2label = id2label(heads, names)
    config.label2id = {name: index for index, name in config.id2label.items()}
    stored = stored_settings(config)
    if len(heads) > 1:
        stored["heads"] = format_heads(heads)
    else:
        stored.pop("heads", None)
    setattr(config, SETTINGS_KEY, stored)
    torch.manual_seed(seed)
    fresh = type(model)(config)
    kept = {name: value for name, value in model.state_dict().items() if not HEAD_PARAMETER.match(name)}
    missing, unexpected = fresh.load_state_dict(kept, strict=False)
    if unexpected or not all(HEAD_PARAMETER.match(name) for name in missing):
        raise FinetuneError(f"cannot replace the heads of {type(model).__name__}: the weights left out are "
                            f"{missing}, the unexpected ones {unexpected}")
    return fresh


def flips(config: FinetuneConfig, names: dict[str, list[str]]) -> bool:
    """Whether training flips clips: ``--flip``; auto: not for Something-Something, nor when a class name says
    left or right (direction is then the label: the testbed's verbs)."""
    if config.flip != "auto":
        return config.flip == "on"
    directional = any(re.search(r"\b(left|right)\b", name.lower()) for own in names.values() for name in own)
    return config.dataset != "ssv2" and not directional


def headline(metrics: dict[str, Any]) -> float:
    """The validation number a best checkpoint is chosen by: action top-1 with verb and noun heads, else the mean
    top-1 of the heads."""
    if "action_top1" in metrics:
        return metrics["action_top1"]
    top1 = [value for name, value in metrics.items() if name.endswith("_top1")]
    return sum(top1) / len(top1) if top1 else 0.0


def prediction_records(logits: np.ndarray, labels: np.ndarray, heads: dict[str, int]) -> list[dict[str, Any]]:
    """Clip records as the harness writes them (labels, top-5 per head, error), from concatenated logits."""
    records = []
    splits = np.cumsum(list(heads.values()))[:-1]
    for row, label_row in zip(logits, labels):
        if (label_row == FAILED).any():
            records.append({"labels": {}, "top5": None, "error": "could not be decoded"})
            continue
        top5 = {}
        for head, values in zip(heads, np.split(row, splits)):
            probabilities = torch.from_numpy(values.astype(np.float32)).softmax(-1)
            top, indices = probabilities.topk(min(5, len(values)))
            top5[head] = [[int(i), float(v)] for i, v in zip(indices, top)]
        records.append({"labels": dict(zip(heads, map(int, label_row))), "top5": top5, "error": None})
    return records


def check_out(out: Path, resume: bool) -> None:
    """Refuse to overwrite a run without ``--resume``, and ``--resume`` without a run to continue."""
    checkpoints = list((out / "checkpoints").glob("checkpoint-*"))
    if resume and not checkpoints:
        raise FinetuneError(f"--resume: {out} holds no checkpoint to continue from")
    if not resume and (checkpoints or (out / "final").exists()):
        raise FinetuneError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")


def read_splits(config: FinetuneConfig, model_id2label: dict) -> tuple[list[Sample], list[Sample]]:
    """The training and validation clips, each file checked whole; the same file twice is refused."""
    train_file, val_file = check_annotation_file(config.annotations), check_annotation_file(config.val_annotations)
    if train_file.resolve() == val_file.resolve():
        raise FinetuneError(f"--annotations and --val-annotations are the same file ({train_file}); validation "
                            f"needs clips the model is not trained on")
    names = class_names_from_id2label(model_id2label or {})
    splits = []
    for path, root in ((train_file, config.root), (val_file, config.val_root or config.root)):
        samples = load_samples(config.dataset, path, root, names, config.classes)
        missing = [sample for sample in samples if not sample.path.is_file()]
        if len(missing) == len(samples):
            raise FinetuneError(f"none of the {len(samples)} videos of {path} is under {root} (the first: "
                                f"{missing[0].path}); check --root / --val-root")
        if missing:
            print(f"videotome finetune: warning: {len(missing)} of the {len(samples)} videos of {path} are missing "
                  f"(the first: {missing[0].path}); they are skipped and counted", file=sys.stderr)
        splits.append(samples)
    return splits[0], splits[1]


def _trainer_class():
    """The Trainer subclass (built on first use: importing transformers' Trainer takes a moment)."""
    from transformers import Trainer

    class FinetuneTrainer(Trainer):
        """``Trainer`` with the recipe's optimizer and schedule, our sampler, and the loss summed over heads."""

        def __init__(self, *args: Any, recipe: Recipe, heads: dict[str, int], **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.recipe, self.heads, self.skipped = recipe, heads, 0
            self.loss_is_scaled_for_ga = False  # our loss is a per-batch mean

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            # Trainer reads a checkpoint's safetensors as they are, without the key conversions from_pretrained
            # applies (VideoMAE saves q_bias/v_bias as query.bias/value.bias): the weights come through
            # from_pretrained instead
            target = model or self.model
            with quiet_loading():
                saved = type(target).from_pretrained(resume_from_checkpoint, local_files_only=True)
            target.load_state_dict(saved.state_dict())

        def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
            if self.optimizer is None:
                self.optimizer = self.recipe.make_optimizer([p for p in self.model.parameters() if p.requires_grad])
            return self.optimizer

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                per_epoch = num_training_steps / self.args.num_train_epochs
                self.lr_scheduler = self.recipe.make_scheduler(optimizer or self.optimizer, per_epoch)
            return self.lr_scheduler

        def _get_train_sampler(self, train_dataset: Any = None) -> EpochSampler:
            return EpochSampler(len(train_dataset or self.train_dataset), self.args.seed)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            labels = inputs["labels"]
            self.skipped += int(inputs["skipped"].sum()) if model.training else 0
            outputs = model(pixel_values=inputs["pixel_values"])
            per_head = logits_per_head(outputs, self.heads)
            loss = sum(F.cross_entropy(values.float(), labels[:, index], ignore_index=FAILED)
                       for index, values in enumerate(per_head.values()))
            return (loss, per_head) if return_outputs else loss

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: Any = None) -> tuple[Any, Any, Any]:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss, per_head = self.compute_loss(model, inputs, return_outputs=True)
            return loss.detach(), torch.cat([v.float() for v in per_head.values()], -1), inputs["labels"]

    return FinetuneTrainer


def _callback_class():
    from transformers import TrainerCallback

    class EpochRecords(TrainerCallback):
        """After each validation: one ``epoch`` record in the Trainer's log history (restored on resume), the log
        rewritten to ``OUT/log.jsonl``, and the best checkpoint kept in ``OUT/best``."""

        def __init__(self, out: Path, source: Path) -> None:
            self.out, self.source, self.trainer, self.began = out, source, None, time.perf_counter()

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.began = time.perf_counter()

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict, model: Any = None,
                        **kwargs: Any) -> None:
            skipped = self.trainer.accelerator.gather(torch.tensor([self.trainer.skipped])).sum().item()
            epoch = round(state.epoch)
            losses = [entry["loss"] for entry in state.log_history if "loss" in entry and epoch - 1 < entry["epoch"]
                      <= epoch + 1e-9]
            val = {name.removeprefix("eval_"): value for name, value in metrics.items()
                   if not name.endswith(("_runtime", "_per_second"))}
            previous = [entry for entry in state.log_history if entry.get("type") == "epoch"]
            record = {"type": "epoch", "epoch": epoch, "step": state.global_step,
                      "train_loss": sum(losses) / len(losses) if losses else None, "val": val,
                      "skipped_videos": skipped, "seconds": time.perf_counter() - self.began}
            best = all(headline(val) > headline(entry["val"]) for entry in previous)
            state.log_history.append(record)
            if state.is_world_process_zero:
                write_log(self.out, state.log_history)
                if best:
                    save_checkpoint(model, self.out / "best", self.source)

    return EpochRecords


def save_checkpoint(model: torch.nn.Module, directory: Path, source: Path) -> None:
    """``save_pretrained`` with the source checkpoint's preprocessor config, so ``videotome eval`` feeds it the
    same pixels."""
    model.save_pretrained(directory)
    processor = source / "preprocessor_config.json"
    if processor.is_file():
        shutil.copy(processor, directory / processor.name)


def write_log(out: Path, history: list[dict[str, Any]]) -> None:
    """``OUT/log.jsonl``: the Trainer's log lines (``type`` step or eval) and our epoch records, rewritten whole."""
    lines = [{"type": "eval" if any(k.startswith("eval_") for k in entry) else "step", **entry}
             if "type" not in entry else entry for entry in history]
    (out / LOG).write_text("".join(json.dumps(line) + "\n" for line in lines))


def plot_curve(out: Path) -> Path:
    """``OUT/curve.png``: training loss and validation accuracy per epoch, from ``OUT/log.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [json.loads(line) for line in (out / LOG).read_text().splitlines()]
    epochs = [line for line in lines if line.get("type") == "epoch"]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(9, 3.2))
    x = [entry["epoch"] for entry in epochs]
    loss_axis.plot(x, [entry["train_loss"] for entry in epochs], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="training loss")
    names = sorted({name for entry in epochs for name in entry["val"] if name.endswith("_top1")})
    for name in names:
        accuracy_axis.plot(x, [100 * entry["val"].get(name, float("nan")) for entry in epochs], marker="o",
                           label=name.replace("_top1", " top-1"))
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy (%)")
    accuracy_axis.legend()
    figure.tight_layout()
    path = out / CURVE
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _cpu_arguments(world: int) -> dict[str, Any]:
    """``TrainingArguments`` for a machine without CUDA: ``use_cpu``, and under a launcher of ``world`` > 1
    processes the gloo backend, without which accelerate does not see a torchrun launch on CPUs as data-parallel
    (each process would train alone on every clip). A single process gets no backend: accelerate would then ask
    for a process group that does not exist."""
    if torch.cuda.is_available():
        return {}
    return {"use_cpu": True, **({"ddp_backend": "gloo"} if world > 1 else {})}


def finetune(config: FinetuneConfig, *, callbacks: tuple[Any, ...] = ()) -> dict[str, Any]:
    """Fine-tune ``config.model`` into ``config.out``; every input is checked before training starts. Returns the
    epoch records (``OUT/log.jsonl``'s) and where the best and final checkpoints are. ``callbacks`` are extra
    ``TrainerCallback`` objects (tests stop a run with one)."""
    from transformers import TrainingArguments

    directory = model_directory(config.model)
    model_config = read_model_config(directory)
    recipe = config.recipe_for(model_config.get("model_type", ""))
    train_samples, val_samples = read_splits(config, model_config.get("id2label"))
    out = Path(config.out)
    check_out(out, config.resume)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if recipe.batch_size % (world * config.grad_accum):
        raise FinetuneError(f"the global batch {recipe.batch_size} does not split over {world} processes x "
                            f"{config.grad_accum} accumulation steps; choose --batch-size or --grad-accum to fit")
    if config.precision == "fp16" and not torch.cuda.is_available():
        raise FinetuneError("--precision fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    loaded = load_model(directory, torch.device("cpu"), config.frames)
    heads = target_heads(config, loaded.config, train_samples)
    names = dataset_class_names(config, heads)
    old = current_heads(loaded.config)
    old_names = head_class_names("csv", config.annotations, old, getattr(loaded.config, "id2label", None))
    model = loaded.model
    if heads != old or any(names.get(h) not in (None, old_names.get(h)) for h in heads):
        model = with_heads(model, heads, names, config.training_seed)
    names = {**head_class_names("csv", config.annotations, heads, model.config.id2label), **names}
    for samples, path in ((train_samples, config.annotations), (val_samples, config.val_annotations)):
        check_labels(samples, heads, path)
    if config.merge.reduces:
        stored = stored_settings(model.config)
        stored["merge"] = config.merge.canonical().to_dict()
        setattr(model.config, SETTINGS_KEY, stored)
        apply_reduction(model, config.merge)
    stored = stored_settings(model.config)
    stored["sampling"] = {"frames": loaded.sampling.frames, "sampling": loaded.sampling.sampling,
                          "stride": loaded.sampling.stride}
    setattr(model.config, SETTINGS_KEY, stored)
    image_size = getattr(loaded.config, "image_size", 224)
    crop = crop_side(loaded.preprocessing, image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    order = list(heads)
    train_set = VideoClips(train_samples, order, loaded.sampling, loaded.preprocessing, crop, decoder=config.decoder,
                           augmentation=Augmentation(flip=flips(config, names)), seed=config.training_seed)
    val_set = VideoClips(val_samples, order, loaded.sampling, loaded.preprocessing, crop, decoder=config.decoder)
    per_device = recipe.batch_size // (world * config.grad_accum)
    arguments = TrainingArguments(
        output_dir=str(out / "checkpoints"), num_train_epochs=recipe.epochs, per_device_train_batch_size=per_device,
        per_device_eval_batch_size=per_device, gradient_accumulation_steps=config.grad_accum,
        eval_strategy="epoch", save_strategy="steps" if config.save_steps else "epoch",
        save_steps=config.save_steps or 500, save_total_limit=config.keep_checkpoints, logging_strategy="steps",
        logging_steps=1, report_to="none", seed=config.training_seed, data_seed=config.training_seed,
        dataloader_num_workers=config.workers, remove_unused_columns=False, label_names=["labels"],
        bf16=config.precision == "bf16", fp16=config.precision == "fp16", disable_tqdm=not config.progress,
        ddp_find_unused_parameters=False, dataloader_pin_memory=torch.cuda.is_available(),
        **_cpu_arguments(world),
    )
    if world > 1 and arguments.world_size != world:
        raise FinetuneError(f"launched as {world} processes, but transformers' Trainer trains {arguments.world_size} "
                            f"as one; check the launcher's environment (WORLD_SIZE, LOCAL_RANK)")
    model.train()
    records = _callback_class()(out, directory)
    trainer = _trainer_class()(
        model=model, args=arguments, train_dataset=train_set, eval_dataset=val_set, data_collator=collate,
        compute_metrics=lambda prediction: compute_metrics(
            prediction_records(prediction.predictions, prediction.label_ids, heads)),
        callbacks=[records, *callbacks], recipe=recipe, heads=heads,
    )
    records.trainer = trainer
    out.mkdir(parents=True, exist_ok=True)
    trainer.train(resume_from_checkpoint=True if config.resume else None)
    epochs = [entry for entry in trainer.state.log_history if entry.get("type") == "epoch"]
    if trainer.is_world_process_zero():
        save_checkpoint(trainer.model, out / "final", directory)
        write_log(out, trainer.state.log_history)
        plot_curve(out)
    return {"epochs": epochs, "best": str(out / "best"), "final": str(out / "final"), "heads": format_heads(heads),
            "recipe": recipe.family}
